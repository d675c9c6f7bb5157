"""smol-llava: assembly from bases + trained files through the registry, adapters merged, image tokens on their
patches, the training script's cached-feature forward, capture against eager. Fast tests use tiny stand-ins for
DINOv2 and SmolLM2 built from config. The shipped model itself (real bases + trained files) is tested in
tests/data/test_smol_llava_card.py: this module's fixture points the registry at the tiny stand-ins while it lives."""

from __future__ import annotations

import importlib.util
import json
import random
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image

import workbench
from tests.helpers import assert_close
from workbench.errors import WeightsMissingError
from workbench.models import packaged, smol_llava
from workbench.models.byte_tokenizer import byte_level_tokenizer

ROOT = Path(__file__).resolve().parents[3]
SCRIPTS = ROOT / "data" / "models" / "smol_llava"
MEAN, STD = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]
RANK, ALPHA = 4, 8


def script(name: str):
    spec = importlib.util.spec_from_file_location(f"test_smol_llava_{name}", SCRIPTS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def tiny_bases():
    from transformers import Dinov2Config, Dinov2Model, LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    tokenizer = byte_level_tokenizer()
    vision = Dinov2Model(Dinov2Config(hidden_size=32, num_hidden_layers=3, num_attention_heads=4,
                                      intermediate_size=64, patch_size=14, image_size=84)).eval()
    text = LlamaForCausalLM(LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=48, intermediate_size=64, num_hidden_layers=2, num_attention_heads=6,
        num_key_value_heads=2, tie_word_embeddings=True, bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)).eval()
    return vision, text, tokenizer


@pytest.fixture(scope="module")
def shipped(tmp_path_factory):
    """Tiny base directories (as the packages would give), a data root with random trained files, a cache."""
    from transformers.models.bit.image_processing_pil_bit import BitImageProcessorPil

    root = tmp_path_factory.mktemp("smol")
    vision, text, tokenizer = tiny_bases()
    vision.save_pretrained(root / "dinov2")
    BitImageProcessorPil(image_mean=MEAN, image_std=STD).save_pretrained(root / "dinov2")
    text.save_pretrained(root / "smollm2")
    tokenizer.save_pretrained(root / "smollm2")
    model, _ = smol_llava.compose(*tiny_bases(), MEAN, STD)
    trained = root / "data" / "models" / "smol_llava"
    trained.mkdir(parents=True)
    generator = torch.Generator().manual_seed(1)
    from safetensors.torch import save_file

    projector = {k: torch.randn(v.shape, generator=generator) * 0.2
                 for k, v in model.model.multi_modal_projector.state_dict().items()}
    save_file(projector, str(trained / smol_llava.PROJECTOR_FILE))
    adapters = {}
    for index, layer in enumerate(model.model.language_model.layers):
        for target in ("q_proj", "v_proj"):
            linear = getattr(layer.self_attn, target)
            path = f"model.language_model.layers.{index}.self_attn.{target}"
            adapters[f"{path}.lora_A"] = torch.randn(RANK, linear.in_features, generator=generator) * 0.1
            adapters[f"{path}.lora_B"] = torch.randn(linear.out_features, RANK, generator=generator) * 0.1
    save_file(adapters, str(trained / smol_llava.ADAPTERS_FILE))
    (trained / smol_llava.ADAPTER_CONFIG_FILE).write_text(json.dumps({"rank": RANK, "alpha": ALPHA}))
    return {"root": root, "projector": projector, "adapters": adapters, "text": text, "vision": vision}


@pytest.fixture(scope="module")
def loaded(shipped):
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("WORKBENCH_DATA", str(shipped["root"] / "data"))
        patch.setenv("WORKBENCH_CACHE", str(shipped["root"] / "cache"))
        patch.setattr(packaged, "dinov2_dir", lambda: shipped["root"] / "dinov2")
        patch.setattr(packaged, "smollm2_dir", lambda: shipped["root"] / "smollm2")
        yield workbench.load_model("smol-llava")


def scene_image() -> Image.Image:
    from workbench.datasets import scenes

    return scenes.render(scenes.heldout_scene(1))


def test_not_trained_yet_says_so(tmp_path, monkeypatch):
    (tmp_path / "models" / "smol_llava").mkdir(parents=True)
    monkeypatch.setenv("WORKBENCH_DATA", str(tmp_path))
    with pytest.raises(WeightsMissingError, match="no trained weights yet.*train.py") as error:
        workbench.load_model("smol-llava")
    assert "\n" not in str(error.value)
    from workbench.models.loading import read_config

    assert read_config("smol-llava") is None


def test_registry_assembles_a_stock_llava_with_the_adapters_merged(shipped, loaded):
    model = loaded.model
    assert loaded.kind == "vlm" and type(model).__name__ == "LlavaForConditionalGeneration"
    assert model.config.vision_config.model_type == "dinov2" and model.config.image_seq_length == 36
    for key, value in shipped["projector"].items():
        assert torch.equal(model.model.multi_modal_projector.state_dict()[key], value)
    base = shipped["text"].model.layers
    for index, layer in enumerate(model.model.language_model.layers):
        a = shipped["adapters"][f"model.language_model.layers.{index}.self_attn.q_proj.lora_A"]
        b = shipped["adapters"][f"model.language_model.layers.{index}.self_attn.q_proj.lora_B"]
        x = torch.randn(5, a.shape[1])
        # LoRA's definition, unmerged: W0 x + (alpha / rank) B A x
        expected = x @ base[index].self_attn.q_proj.weight.T + (ALPHA / RANK) * (x @ a.T) @ b.T
        assert_close(layer.self_attn.q_proj(x), expected, what=f"merged q_proj {index}")
        assert torch.equal(layer.self_attn.k_proj.weight, base[index].self_attn.k_proj.weight)  # not adapted


def test_image_tokens_carry_their_patch(shipped, loaded):
    """Image token (row, col) holds projector(tower patch row * 6 + col): the tower run on its own, outside LLaVA."""
    image = scene_image()
    trace = workbench.trace(loaded, "Is there a red circle?", image=image)
    image_tokens = [t for t in trace.tokens if t.region == "image"]
    assert [t.patch for t in image_tokens] == [(k // 6, k % 6) for k in range(36)]
    pixels = loaded.processor.image_processor(images=image, return_tensors="pt")["pixel_values"]
    assert pixels.shape[-2:] == (84, 84)
    with torch.no_grad():
        patches = shipped["vision"](pixels, output_hidden_states=True).hidden_states[-2][0, 1:]
        expected = loaded.model.model.multi_modal_projector(patches)
    seen = {}

    def keep(module, args, kwargs):
        seen["embeds"] = kwargs["inputs_embeds"]

    hook = loaded.model.model.language_model.register_forward_pre_hook(keep, with_kwargs=True)
    try:
        ids = torch.tensor([[t.id for t in trace.tokens]])
        with torch.no_grad():
            loaded.model(input_ids=ids, pixel_values=pixels)
    finally:
        hook.remove()
    for token, (row, col) in zip(image_tokens, [t.patch for t in image_tokens]):
        assert_close(seen["embeds"][0, token.i], expected[row * 6 + col], what=f"image token at {row, col}")


def test_cached_features_forward_equals_the_pixel_forward(loaded):
    train = script("train")
    processor, model = loaded.processor, loaded.model
    question, answer = "Is there a red circle?", "Yes, there is a red circle."
    ids, labels = train.encode(processor.tokenizer, question, answer, model.config.image_seq_length)
    assert sum(label != -100 for label in labels) == len(processor.tokenizer(answer + "<|im_end|>",
                                                                           add_special_tokens=False)["input_ids"])
    ids = torch.tensor([ids])
    features = train.tower_features(model, processor, [scene_image()])
    pixels = processor.image_processor(images=scene_image(), return_tensors="pt")["pixel_values"]
    with torch.no_grad():
        ours = train.forward_from_features(model, ids, torch.ones_like(ids), features)
        reference = model(input_ids=ids, pixel_values=pixels).logits
    assert_close(ours, reference, what="logits from cached features")


def test_training_wrappers_equal_the_shipped_merge(shipped):
    """LoRA as trained (wrappers) and as shipped (merged into the weights) give the same logits."""
    train = script("train")
    trained, _ = smol_llava.compose(*tiny_bases(), MEAN, STD)
    lora = train.attach_lora(trained, RANK, ALPHA, seed=0)
    with torch.no_grad():
        for module in lora.values():
            module.lora_B.normal_(0, 0.1)
    adapters = {f"{path}.{name}": getattr(module, name).detach().clone()
                for path, module in lora.items() for name in ("lora_A", "lora_B")}
    merged, _ = smol_llava.compose(*tiny_bases(), MEAN, STD)
    smol_llava.merge_adapters(merged, adapters, ALPHA / RANK)
    ids = torch.randint(0, 200, (1, 12))
    with torch.no_grad():
        assert_close(merged(input_ids=ids).logits, trained(input_ids=ids).logits, what="merged vs wrapped LoRA")


def test_capture_equals_eager_in_both_stacks(loaded):
    from transformers import AttentionInterface, AttentionMaskInterface
    from transformers.masking_utils import eager_mask

    from workbench.capture.inputs import prepare_input
    from workbench.capture.layout import discover_layout

    image = scene_image()
    trace = workbench.trace(loaded, "Is there a red circle?", image=image, maps="all", vision_maps="all",
                            map_dtype="float32")
    layout = discover_layout(loaded.model)
    calls = {}

    def reference(module, query, key, value, attention_mask, **kwargs):
        output, weights = sys.modules[type(module).__module__].eager_attention_forward(
            module, query, key, value, attention_mask, **kwargs)
        calls[layout.locate(module)] = weights.detach()
        return output, weights

    AttentionInterface.register("wb_smol_eager", reference)
    AttentionMaskInterface.register("wb_smol_eager", eager_mask)
    previous = loaded.model.config._attn_implementation
    loaded.model.set_attn_implementation("wb_smol_eager")
    try:
        with torch.no_grad():
            loaded.model(input_ids=torch.tensor([[t.id for t in trace.tokens]]),
                         **prepare_input(loaded, "Is there a red circle?", image).model_inputs)
    finally:
        loaded.model.set_attn_implementation(previous)
    for layer in range(layout.stacks["text"].n_layers):
        assert_close(trace.layer(layer)["maps"], calls["text", layer][0], what=f"text layer {layer}")
    for layer in range(layout.stacks["vision"].n_layers):
        assert_close(trace.layer(layer, "vision")["maps"], calls["vision", layer][0], what=f"vision layer {layer}")


def test_full_sentence_answers_and_unanswerable_questions():
    from workbench.datasets import scenes

    examples = script("examples")
    scene = scenes.heldout_scene(3)
    present = scene.objects[0]
    assert examples.sentence(scenes.presence(scene, present.colour, present.shape)) == \
        f"Yes, there is a {present.colour} {present.shape}."
    rng = random.Random(0)
    for _ in range(20):
        question, answer = examples.unanswerable(scene, rng)
        asked = question.split("the ")[1].rstrip("?").split()
        assert asked[0] not in {o.shape for o in scene.objects} | {o.colour for o in scene.objects}
        assert examples.parse_refusal(answer)
    assert examples.parse_presence("No, there is no red circle.") == "no"
    assert examples.parse_presence("The answer is yes.") is None
