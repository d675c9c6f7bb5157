"""VLM families on seeded tiny fixtures: capture against HF eager for every attention call of the language model
and of the vision tower, image-token labels against features planted through the model's own packing code, and
VHD's without-image run against eager forwards.

References are independent of the workbench: the eager maps come from each module's own transformers
`eager_attention_forward`, recorded call by call; the label check replaces the projector's (or merger's) output
by codes that name each feature's (tile, row, col) — read from the processor's pixels, not from our arithmetic —
and reads them back from the language model's input embeddings at the image positions.
"""

from __future__ import annotations

import math
import sys
import time

import pytest
import torch
from PIL import Image

import workbench
from tests.helpers import assert_close, eager_head_outputs, statistics_from_maps
from workbench.capture.inputs import prepare_input
from workbench.capture.layout import discover_layout
from workbench.models import tiny_vlm
from workbench.traces.tokens import REGIONS

FAMILIES = [name for name in tiny_vlm.BUILDERS if name != "tiny-mllama"]  # cross-attention: test_mllama.py
WITH_CLS = ("clip_vision_model", "internvl_vision")  # towers that put a [CLS] before each tile's patches
PROMPT = "What is red?"
NEW_TOKENS = 2


@pytest.fixture(scope="module")
def family():
    cache = {}

    def get(name: str):
        if name not in cache:
            cache[name] = tiny_vlm.BUILDERS[name]()
        return cache[name]

    return get


def coded_image(width: int, height: int, block: int = 4) -> Image.Image:
    """Every block x block square painted with its own (row, col): red = 8 * row + 4, green = 8 * col + 4."""
    image = Image.new("RGB", (width, height))
    for y in range(height):
        for x in range(width):
            image.putpixel((x, y), (8 * (y // block) + 4, 8 * (x // block) + 4, 128))
    return image


# Multiples of 8 pixels, so Qwen's resize to multiples of patch x merge leaves the coded squares in place.
IMAGES = {"wide": (56, 24), "tall": (16, 48)}


# ------------------------------------------------------------------------------------------ the eager reference
def eager_calls(model, **inputs) -> dict[tuple[str, int], list[torch.Tensor]]:
    """(stack, layer) -> the attention weights [batch, head, query_pos, key_pos] of each call, in call order, from
    the module's own transformers eager implementation."""
    from transformers import AttentionInterface, AttentionMaskInterface
    from transformers.masking_utils import eager_mask

    layout = discover_layout(model)
    calls: dict[tuple[str, int], list[torch.Tensor]] = {}

    def reference(module, query, key, value, attention_mask, **kwargs):
        eager = sys.modules[type(module).__module__].eager_attention_forward
        output, weights = eager(module, query, key, value, attention_mask, **kwargs)
        calls.setdefault(layout.locate(module), []).append(weights.detach())
        return output, weights

    AttentionInterface.register("wb_test_eager", reference)
    AttentionMaskInterface.register("wb_test_eager", eager_mask)
    previous = model.config._attn_implementation
    model.set_attn_implementation("wb_test_eager")
    try:
        with torch.no_grad():
            model(**inputs)
    finally:
        model.set_attn_implementation(previous)
    return calls


def _trace_and_reference(loaded, image, maps: bool = True):
    options = {"maps": "all", "vision_maps": "all", "map_dtype": "float32"} if maps else {"kernel": "auto"}
    trace = workbench.trace(loaded, PROMPT, image=image, max_new_tokens=NEW_TOKENS, **options)
    prepared = prepare_input(loaded, PROMPT, image)
    ids = torch.tensor([[token.id for token in trace.tokens]])
    extra = dict(prepared.model_inputs)
    # per-token types over the generated tokens too: Qwen's modality and Gemma 3's image flag (0: text), PaliGemma's
    # prefix / suffix (1: the causal suffix)
    for key, generated in (("mm_token_type_ids", 0), ("token_type_ids", int(loaded.model.config.model_type ==
                                                                                "paligemma"))):
        if key in extra:
            types = extra[key]
            extra[key] = torch.cat([types, types.new_full((1, ids.shape[1] - types.shape[1]), generated)], 1)
    return trace, eager_calls(loaded.model, input_ids=ids, **extra)


def _language_model(model):
    inner = model.model
    return getattr(inner, "language_model", None) or inner.text_model


# ------------------------------------------------------------------------------------------------ the tests
@pytest.mark.parametrize("name", FAMILIES)
def test_fixture_builds_fast_and_seeded(family, name):
    family(name)  # imports done
    start = time.perf_counter()
    again = tiny_vlm.BUILDERS[name]()
    assert time.perf_counter() - start < 1.0
    first = dict(family(name).model.named_parameters())
    assert all(torch.equal(first[key], value) for key, value in again.model.named_parameters())


@pytest.mark.parametrize("maps", [True, False], ids=["maps", "statistics-only"])
@pytest.mark.parametrize("shape", list(IMAGES))
@pytest.mark.parametrize("name", FAMILIES)
def test_capture_equals_eager_for_every_call(family, name, shape, maps):
    """Every language-model layer (prompt and decode rows) and every vision-tower call (each anyres tile, each
    packed chunk) against eager maps, and the statistics against the eager maps' own: with full maps (the two-pass
    path) and statistics only ("auto": the one-pass kernel where it applies)."""
    loaded = family(name)
    trace, calls = _trace_and_reference(loaded, coded_image(*IMAGES[shape]), maps=maps)
    regions = trace.regions
    layout = discover_layout(loaded.model)
    for layer in range(layout.stacks["text"].n_layers):
        (eager,) = calls["text", layer]
        stats = trace.layer(layer)
        if maps:
            assert_close(stats["maps"], eager[0], what=f"{name} text layer {layer} maps")
        visible = (eager[0] > 0).any(0)  # the keys the model's own mask let through (window, image blocks)
        for stat, value in statistics_from_maps(eager[0], regions, causal=True, visible=visible).items():
            assert_close(stats[stat], value, what=f"{name} text layer {layer} {stat}")
    for layer in range(layout.stacks["vision"].n_layers):
        stats, start = trace.layer(layer, "vision"), 0
        for call in calls["vision", layer]:
            for tile in call:  # the tiles of a batched call, then the next call's
                n = tile.shape[-1]
                block = slice(start, start + n)
                if maps:
                    assert_close(stats["maps"][:, block, block], tile, what=f"{name} vision {layer} at {start}")
                regions = torch.full((n,), REGIONS.index("image"))
                if loaded.model.config.vision_config.model_type in WITH_CLS:
                    regions[0] = REGIONS.index("special")
                reference = statistics_from_maps(tile, regions, causal=False)
                for stat in ("entropy", "key_mass", "region_mass"):
                    assert_close(stats[stat][:, block], reference[stat], what=f"{name} vision {layer} {stat}")
                start += n
        assert start == stats["entropy"].shape[-1]  # every position of the stack came from one eager call
    run = trace.meta["capture"]["kernels_run"]
    from workbench.kernels import fused_cpu

    assert ("one-pass" in run["text"] and "one-pass" in run["vision"]) == (not maps and fused_cpu.load())


def _planted_places(loaded, image) -> list[tuple]:
    """(tile, row, col) or None per image token, read back from the LM's input embeddings after the projector's
    (merger's) output was replaced by codes naming where each feature comes from."""
    model, config = loaded.model, loaded.model.config
    prepared = prepare_input(loaded, PROMPT, image)
    family = config.model_type
    seen = {}

    def code(tile, row, col, like):  # [has a patch, tile + 1 (0: no tile), row, col]
        out = torch.zeros(like.shape[-1])
        out[:4] = torch.tensor([1.0, 0.0 if tile is None else tile + 1.0, row, col])
        return out

    if family in ("llava_next", "llava_onevision", "paligemma"):
        side = config.vision_config.image_size // config.vision_config.patch_size
        tiled = family != "paligemma"

        def project(module, args, output):  # [tile, side * side, d]: tile 0 the base image, then the crops
            codes = torch.zeros_like(output)
            for tile in range(output.shape[0]):
                for k in range(output.shape[1]):
                    codes[tile, k] = code(tile if tiled else None, k // side, k % side, output[tile, k])
            return codes

        handles = [model.model.multi_modal_projector.register_forward_hook(project)]
        if tiled:
            newline = model.model.image_newline
            saved = newline.detach().clone()
            with torch.no_grad():
                newline.zero_()
    elif family in ("idefics3", "smolvlm", "internvl"):
        internvl = family == "internvl"
        vision = config.vision_config
        side = (vision.image_size[0] // vision.patch_size[0]) if internvl else vision.image_size // vision.patch_size
        scale = round(1 / config.downsample_ratio) if internvl else config.scale_factor
        first = 1 if internvl else 0  # InternVL's tower keeps a [CLS] the model drops

        def encode(module, args, kwargs, output):  # [tile, side * side, d]: each patch's (tile, row, col)
            hidden = output.last_hidden_state
            codes = torch.zeros_like(hidden)
            for tile in range(hidden.shape[0]):
                for k in range(hidden.shape[1] - first):
                    codes[tile, first + k] = code(tile, k // side, k % side, hidden[tile, k])
            output.last_hidden_state = codes
            return output

        def shuffled(module, args, output):  # each token concatenates scale^2 patches' codes: its block
            blocks = args[0].reshape(*args[0].shape[:2], scale * scale, -1)[..., :4]
            codes = torch.zeros_like(output)
            for tile in range(blocks.shape[0]):
                for k in range(blocks.shape[1]):
                    patches = blocks[tile, k]
                    assert (patches[:, 1] == patches[0, 1]).all()  # one tile per token
                    codes[tile, k] = code(int(patches[0, 1]) - 1, int(patches[:, 2].min()) // scale,
                                          int(patches[:, 3].min()) // scale, output[tile, k])
            return codes

        tower = model.model.vision_tower if internvl else model.model.vision_model
        projector = model.model.multi_modal_projector if internvl else model.model.connector.modality_projection
        handles = [tower.register_forward_hook(encode, with_kwargs=True),
                   projector.register_forward_hook(shuffled)]
    elif family == "gemma3":  # the projector average-pools the tower's patch grid: codes pooled by the model itself
        side = config.vision_config.image_size // config.vision_config.patch_size
        pool = side // math.isqrt(config.mm_tokens_per_image)
        projector = model.model.multi_modal_projector

        def encode(module, args, kwargs, output):
            hidden = output.last_hidden_state
            codes = torch.zeros_like(hidden)
            for k in range(hidden.shape[1]):
                codes[0, k] = code(None, k // side, k % side, hidden[0, k])
            output.last_hidden_state = codes
            return output

        def pooled(module, args, output):  # the mean of a pool x pool block of (row, col) codes
            out = args[0].clone()
            out[..., 2:4] = torch.floor(out[..., 2:4] / pool)
            return out

        saved = projector.mm_input_projection_weight.detach().clone()
        with torch.no_grad():
            projector.mm_input_projection_weight.copy_(torch.eye(*saved.shape))
        handles = [model.model.vision_tower.register_forward_hook(encode, with_kwargs=True),
                   projector.mm_soft_emb_norm.register_forward_hook(pooled)]
    else:  # Qwen: merged token k covers pixel rows merge^2 * k ... of the processor's patches
        merge = config.vision_config.spatial_merge_size
        patch = config.vision_config.patch_size
        mean = torch.tensor(loaded.processor.image_processor.image_mean)
        std = torch.tensor(loaded.processor.image_processor.image_std)

        def merged(module, args, kwargs, output):
            pixels = (args[0] if args else kwargs["hidden_states"]).float()
            codes = torch.zeros_like(output.pooler_output)
            per_patch = pixels.shape[1] // 3  # channel-major: [red ..., green ..., blue ...]
            for k in range(codes.shape[0]):
                first = pixels[merge * merge * k]
                red = float(first[0] * std[0] + mean[0]) * 255
                green = float(first[per_patch] * std[1] + mean[1]) * 255
                block = merge * patch // 4  # coded squares (4 px) per merged token side
                codes[k] = code(None, round((red - 4) / 8) // block, round((green - 4) / 8) // block, codes[k])
            output.pooler_output = codes
            return output

        handles = [model.model.visual.register_forward_hook(merged, with_kwargs=True)]
    language = _language_model(model)
    grab = language.register_forward_pre_hook(
        lambda module, args, kwargs: seen.__setitem__("embeds", kwargs["inputs_embeds"][0].detach().clone()),
        with_kwargs=True)
    try:
        with torch.no_grad():
            model(input_ids=prepared.input_ids, **prepared.model_inputs)
    finally:
        for handle in handles + [grab]:
            handle.remove()
        if family in ("llava_next", "llava_onevision"):
            with torch.no_grad():
                newline.copy_(saved)
        if family == "gemma3":
            with torch.no_grad():
                projector.mm_input_projection_weight.copy_(saved)
    places = []
    for position in prepared.image_positions():
        has, tile, row, col = (round(float(v)) for v in seen["embeds"][position, :4])
        places.append((tile - 1 if tile else None, row, col) if has else None)
    return places


@pytest.mark.parametrize("shape", list(IMAGES))
@pytest.mark.parametrize("name", FAMILIES)
def test_image_tokens_sit_on_their_patches(family, name, shape):
    loaded = family(name)
    image = coded_image(*IMAGES[shape])
    trace = workbench.trace(loaded, PROMPT, image=image)
    planted = _planted_places(loaded, image)
    ours = [None if t.patch is None else (t.tile, *t.patch) for t in trace.tokens if t.region == "image"]
    assert len(ours) == len(planted) > 0
    assert ours == planted
    assert sum(place is not None for place in ours) >= len(ours) // 2


@pytest.mark.parametrize("name", FAMILIES)
def test_vhd_without_image_run(family, name):
    """VHD's text-only run (image tokens removed) and with-image run: each head's contribution at the prompt's last
    row against eager forwards of the same two sequences."""
    from workbench.analyses import divergence

    loaded = family(name)
    image = coded_image(*IMAGES["wide"])
    result = divergence.vhd(loaded, PROMPT, image, max_new_tokens=1)
    prepared = prepare_input(loaded, PROMPT, image)
    ids = prepared.input_ids
    without_ids = ids[:, ids[0] != loaded.model.config.image_token_id]
    with_image = _head_outputs(loaded, input_ids=ids, **prepared.model_inputs)
    kept = ids[0] != loaded.model.config.image_token_id
    per_token = {key: value[:, kept] for key, value in prepared.model_inputs.items()
                 if key in ("token_type_ids", "mm_token_type_ids")}  # PaliGemma's prefix stays one prefix
    without = _head_outputs(loaded, input_ids=without_ids, **per_token)
    cosine = torch.nn.functional.cosine_similarity(with_image.double(), without.double(), dim=-1)
    assert result.cost["text_only_tokens"] == without_ids.shape[1] < ids.shape[1]
    assert (result.vhd[0].double() - (1 - cosine)).abs().max() < 1e-4


def _head_outputs(loaded, **inputs) -> torch.Tensor:
    """[layer, head, d_model] at the last row of each layer (eager)."""
    return eager_head_outputs(loaded.model, _language_model(loaded.model).layers,
                              loaded.text_config.num_attention_heads, **inputs)


def test_gemma3_image_tokens_see_each_other_both_ways(family):
    """Gemma 3's mask lets an image token see the later image tokens of its image (and nothing after them)."""
    loaded = family("tiny-gemma3-vlm")
    trace = workbench.trace(loaded, PROMPT, image=coded_image(*IMAGES["wide"]), maps="all", map_dtype="float32")
    image = [token.i for token in trace.tokens if token.region == "image"]
    for layer in range(trace.n_layers()):
        maps = trace.layer(layer)["maps"]
        assert (maps[:, image[0], image[-1]] > 0).all()
        assert (maps[:, image[0], image[-1] + 1:] == 0).all()


def test_registry_names_load_and_hub_aliases_fail_in_one_line(tmp_path, monkeypatch):
    """Every tiny VLM name loads through `load_model`; the real checkpoints' aliases are VLMs whose missing weights
    are one line naming the hub id (this machine has no hub)."""
    from workbench.errors import WeightsMissingError
    from workbench.models.registry import REGISTRY

    for name in FAMILIES:
        assert REGISTRY[name].source == "tiny" and REGISTRY[name].kind == "vlm"
    assert workbench.load_model("tiny-idefics3").model.config.model_type == "idefics3"
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))
    for alias in ("llava-next", "llava-onevision", "qwen2-vl", "qwen2.5-vl", "qwen3-vl", "idefics3", "smolvlm", "gemma-3-4b",
                  "paligemma", "internvl"):
        assert REGISTRY[alias].kind == "vlm" and REGISTRY[alias].source == "hub"
        with pytest.raises(WeightsMissingError) as raised:
            workbench.load_model(alias)
        assert REGISTRY[alias].hub_id in str(raised.value) and "\n" not in str(raised.value)


def test_circuits_refuse_m_rope_in_one_line(family):
    """Circuit tracing's rotary form assumes one position per token; M-RoPE (Qwen2-VL) gives image tokens 2D
    positions and shifts the text after them, so circuits refuse it rather than report wrong Omega forms."""
    from workbench.analyses import circuits
    from workbench.errors import InputError

    loaded = family("tiny-qwen2-vl")
    trace = workbench.trace(loaded, PROMPT, image=coded_image(*IMAGES["wide"]), decomposition=True)
    with pytest.raises(InputError, match="M-RoPE") as raised:
        circuits.analyse(trace, model=loaded)
    assert "\n" not in str(raised.value)


def test_paligemma_prefix_attends_both_ways(family):
    """PaliGemma's prefix-LM mask: every prompt position (image, BOS, text) sees the whole prompt, later positions
    included; generated tokens see causally."""
    loaded = family("tiny-paligemma")
    trace = workbench.trace(loaded, PROMPT, image=coded_image(*IMAGES["wide"]), max_new_tokens=NEW_TOKENS,
                            maps="all", map_dtype="float32")
    start = trace.generation["start"]
    for layer in range(trace.n_layers()):
        maps = trace.layer(layer)["maps"]
        assert (maps[:, 0, start - 1] > 0).all() and (maps[:, :start, start:] == 0).all()
        assert (maps[:, start, start + 1:] == 0).all()


def test_tiles_survive_a_bundle_and_the_cli_reads_it(family, tmp_path):
    """A tiled family's tokens keep their patch and tile through a saved bundle; `workbench info` reads it and
    names the kernels that ran per stack."""
    import subprocess

    loaded = family("tiny-llava-next")
    trace = workbench.trace(loaded, PROMPT, image=coded_image(*IMAGES["wide"]), max_new_tokens=1)
    path = tmp_path / "next.wbtrace"
    trace.save(path)
    again = workbench.load(path)
    assert [(t.patch, t.tile) for t in again.tokens] == [(t.patch, t.tile) for t in trace.tokens]
    assert {t.tile for t in again.tokens if t.region == "image"} >= {0, 1, 2}
    info = subprocess.run([sys.executable, "-m", "workbench.cli.main", "info", str(path)], capture_output=True,
                          text=True, check=False)
    assert info.returncode == 0, info.stderr
    from workbench.kernels import fused_cpu

    assert "vision" in info.stdout and ("one-pass" in info.stdout) == bool(fused_cpu.load())


def test_untraceable_vlm_families_are_refused_in_one_line(tmp_path):
    """Llama 4 vision (torchvision-only image processor) is refused before any weights load, naming the class, the
    reason and the families that work; a supported family's config passes the same check."""
    from transformers import Llama4Config

    from workbench.errors import ModelNotFoundError
    from workbench.models.loading import check_supported

    Llama4Config().save_pretrained(tmp_path)
    with pytest.raises(ModelNotFoundError) as raised:
        workbench.load_model(str(tmp_path))
    message = str(raised.value)
    assert "Llama4Config" in message and "torchvision" in message and "Qwen2-VL" in message
    assert "\n" not in message
    check_supported(tiny_vlm.BUILDERS["tiny-qwen2-vl"]().model.config, "here")
