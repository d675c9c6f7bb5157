"""Capture against HF eager attention: maps, statistics, logits and generation, on the tiny fixtures."""

from __future__ import annotations

import pytest
import torch
from tests.helpers import assert_close, eager_forward, statistics_from_maps
from PIL import Image

import workbench
from workbench.capture.attention import capturing
from workbench.capture.layout import discover_layout
from workbench.capture.plan import CapturePlan
from workbench.capture.recorder import Recorder

CASES = [("tiny-gpt2", True, 4), ("tiny-llama", True, 4), ("tiny-bert", False, 0), ("tiny-llava", True, 4)]


@pytest.fixture(scope="module")
def scene_image(tmp_path_factory):
    path = tmp_path_factory.mktemp("img") / "scene.png"
    image = Image.new("RGB", (48, 40), (30, 30, 30))
    for x in range(10, 30):
        for y in range(8, 20):
            image.putpixel((x, y), (220, 40, 40))
    image.save(path)
    return path


def _traced(loaded, image, new_tokens):
    return workbench.trace(loaded, "The red square is next to the", image=image, max_new_tokens=new_tokens,
                           maps="all", vision_maps="all" if image else None, map_dtype="float32")


def _eager_inputs(loaded, trace, image):
    ids = torch.tensor([[t.id for t in trace.tokens]])
    inputs = {"input_ids": ids}
    if image is not None:
        encoded = loaded.processor(text="<image>", images=Image.open(image).convert("RGB"), return_tensors="pt")
        inputs["pixel_values"] = encoded["pixel_values"]
    return inputs


@pytest.mark.parametrize("name,causal,new_tokens", CASES)
def test_maps_and_statistics_equal_eager(models, scene_image, name, causal, new_tokens):
    loaded = models(name)
    image = scene_image if loaded.kind == "vlm" else None
    trace = _traced(loaded, image, new_tokens)
    assert len(trace.tokens) == len(trace.tokens[: trace.generation["start"]]) + new_tokens
    reference = eager_forward(loaded.model, **_eager_inputs(loaded, trace, image))
    regions = trace.regions
    for layer, eager_maps in enumerate(reference.attentions):
        stats = trace.layer(layer)
        assert_close(stats["maps"], eager_maps[0], what=f"{name} layer {layer} maps")
        expected = statistics_from_maps(eager_maps[0], regions, causal=causal)
        for stat, value in expected.items():
            assert_close(stats[stat], value, what=f"{name} layer {layer} {stat}")


def test_vision_tower_maps_equal_eager(models, scene_image):
    loaded = models("tiny-llava")
    trace = _traced(loaded, scene_image, 0)
    pixels = _eager_inputs(loaded, trace, scene_image)["pixel_values"]
    reference = eager_forward(loaded.model.model.vision_tower, pixel_values=pixels)
    assert len(reference.attentions) == trace.n_layers("vision") == 2
    n_vision = reference.attentions[0].shape[-1]
    regions = torch.tensor([0] + [2] * (n_vision - 1))
    for layer, eager_maps in enumerate(reference.attentions):
        stats = trace.layer(layer, "vision")
        assert_close(stats["maps"], eager_maps[0], what=f"vision layer {layer} maps")
        for stat, value in statistics_from_maps(eager_maps[0], regions, causal=False).items():
            assert_close(stats[stat], value, what=f"vision layer {layer} {stat}")


@pytest.mark.parametrize("name", ["tiny-gpt2", "tiny-llama", "tiny-llava"])
def test_generation_matches_hf_generate(models, scene_image, name):
    loaded = models(name)
    image = scene_image if loaded.kind == "vlm" else None
    trace = workbench.trace(loaded, "Once upon a time", image=image, max_new_tokens=6)
    start = trace.generation["start"]
    prompt_ids = torch.tensor([[t.id for t in trace.tokens[:start]]])
    extra = {}
    if image is not None:
        extra["pixel_values"] = _eager_inputs(loaded, trace, image)["pixel_values"]
    with torch.no_grad():
        generated = loaded.model.generate(input_ids=prompt_ids, max_new_tokens=6, do_sample=False, **extra)
    hf_tokens = generated[0, start:].tolist()
    ours = [t.id for t in trace.tokens[start:]]
    assert ours == hf_tokens[: len(ours)]
    assert all(t.region == "generated" for t in trace.tokens[start:])


def _same_logits(plain, captured, implementation):
    if implementation == "torch":  # SDPA computes the output: bit for bit the uncaptured model
        return torch.equal(plain, captured)
    # the one-pass kernel computes it: equal up to fp32 summation order
    return torch.allclose(plain, captured, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("implementation", ["torch", "auto"])
@pytest.mark.parametrize("name", ["tiny-gpt2", "tiny-llama", "tiny-bert", "tiny-llava"])
def test_logits_unchanged_by_capture(models, scene_image, name, implementation):
    loaded = models(name)
    model = loaded.model
    ids = torch.randint(10, 200, (1, 24), generator=torch.Generator().manual_seed(1))
    inputs = {"input_ids": ids}
    if loaded.kind == "vlm":
        encoded = loaded.processor(text="<image> hi", images=Image.open(scene_image), return_tensors="pt")
        inputs = {"input_ids": encoded["input_ids"], "pixel_values": encoded["pixel_values"]}
    with torch.no_grad():
        plain = model(**inputs)
        layout = discover_layout(model)
        recorder = Recorder(layout, CapturePlan(maps={}, kernel=implementation),
                            text_capacity=inputs["input_ids"].shape[1] + 1,
                            prompt_length=inputs["input_ids"].shape[1])
        recorder.begin_step(0, inputs["input_ids"].shape[1])
        with capturing(model, recorder):
            captured = model(**inputs)
    key = "logits" if loaded.kind != "encoder" else "last_hidden_state"
    assert _same_logits(plain[key], captured[key], implementation)
    from workbench.kernels import fused_cpu

    one_pass = sum(counts.get("one-pass", 0) for counts in recorder.kernels_run.values())
    assert (one_pass > 0) == (implementation == "auto" and fused_cpu.load())
    if loaded.kind != "encoder":  # one KV-cache decode step too (single query row, GQA packing in HF)
        step = torch.tensor([[42]])
        with torch.no_grad():
            plain_step = model(input_ids=step, cache=plain["cache"])
            recorder.begin_step(inputs["input_ids"].shape[1], 1)
            with capturing(model, recorder):
                captured_step = model(input_ids=step, cache=captured["cache"])
        assert _same_logits(plain_step["logits"], captured_step["logits"], implementation)
    assert recorder.tensors(), "the recorder saw no attention call"
    assert model.config._attn_implementation != "workbench"


def test_hidden_states_and_head_outputs(models):
    loaded = models("tiny-gpt2")
    trace = workbench.trace(loaded, "Hidden states please", max_new_tokens=3, hidden_states=True,
                            head_outputs="all")
    ids = torch.tensor([[t.id for t in trace.tokens]])
    reference = eager_forward(loaded.model, input_ids=ids)
    attention_outputs = {}
    hooks = [block.attn.register_forward_hook(lambda m, i, o, l=l: attention_outputs.__setitem__(l, o[0]))
             for l, block in enumerate(loaded.model.transformer.h)]
    with torch.no_grad():
        loaded.model(ids)
    for hook in hooks:
        hook.remove()
    for layer in range(trace.n_layers()):
        stats = trace.layer(layer)
        assert_close(stats["hidden_in"], reference.hidden_states[layer][0], atol=1e-4, what=f"hidden {layer}")
        bias = loaded.model.transformer.h[layer].attn.c_proj.bias
        summed = stats["head_out"].sum(0) + bias  # heads' contributions + the shared bias = attention output
        assert stats["head_out_positions"].tolist() == list(range(len(trace.tokens)))
        assert_close(summed, attention_outputs[layer][0], atol=1e-4, what=f"head outputs {layer}")


def test_switch_routes_every_config_and_restores_each(models):
    """The attention switch is found once per model and replayed (capture/attention.py `_switched`): inside a capture
    every config the model's attention modules read says "workbench" (what `set_attn_implementation` sets), and on
    exit each gets back its own previous value, here a vision tower left on eager beside an SDPA language model."""
    model = models("tiny-llava").model
    configs = {"top": model.config, "text": model.config.text_config, "vision": model.config.vision_config}
    before = {name: config._attn_implementation for name, config in configs.items()}
    model.config.vision_config._attn_implementation_internal = "eager"
    try:
        for _ in range(2):  # the first switch records it, the second replays it
            expected = {name: config._attn_implementation for name, config in configs.items()}
            recorder = Recorder(discover_layout(model), CapturePlan(maps={}), text_capacity=4, prompt_length=4)
            with capturing(model, recorder):
                assert {name: config._attn_implementation for name, config in configs.items()} == dict.fromkeys(
                    configs, "workbench")
                assert {type(module).__name__ for module in model.modules() if getattr(module, "config", None) is not
                        None and module.config._attn_implementation != "workbench"} == set()
            assert {name: config._attn_implementation for name, config in configs.items()} == expected
            assert expected["vision"] == "eager" and expected["text"] != "workbench"
    finally:
        model.config.vision_config._attn_implementation_internal = before["vision"]
