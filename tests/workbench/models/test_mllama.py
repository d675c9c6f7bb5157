"""Mllama (Llama 3.2 Vision) on its seeded tiny fixture: the self-attention ("text"), cross-attention ("cross":
text rows over the tiles' features) and tower ("vision": local then global encoder) stacks against each module's
own transformers eager attention, the cross keys' (tile, row, col) against features planted at the projector,
VHD's run without the image, and a bundle round trip read by `workbench info`."""

from __future__ import annotations

import time

import pytest
import torch

import workbench
from tests.helpers import assert_close, eager_head_outputs, statistics_from_maps
from tests.workbench.models.test_vlm_families import NEW_TOKENS, PROMPT, coded_image, eager_calls
from workbench.capture.inputs import prepare_input
from workbench.models import tiny_vlm
from workbench.traces.tokens import REGIONS

IMAGES = {"wide": (56, 24), "tall": (16, 48)}  # 1 x 3 and 3 x 1 tiles of the 4 the tower holds


@pytest.fixture(scope="module")
def mllama():
    return tiny_vlm.tiny_mllama()


def test_fixture_builds_fast_and_seeded(mllama):
    start = time.perf_counter()
    again = tiny_vlm.tiny_mllama()
    assert time.perf_counter() - start < 1.0
    first = dict(mllama.model.named_parameters())
    assert all(torch.equal(first[key], value) for key, value in again.model.named_parameters())


def _key_regions(n_keys: int, per_tile: int, real: int) -> torch.Tensor:
    """[CLS] special, patches image, padding special; written out here, not taken from the workbench."""
    regions = []
    for k in range(n_keys):
        inside = k % per_tile
        regions.append(REGIONS.index("image") if 0 < inside < real else REGIONS.index("special"))
    return torch.tensor(regions)


def _trace_and_reference(mllama, image, maps: bool):
    """The trace, and the eager calls of one forward over its tokens (the cross-attention mask's last row repeated
    over the generated tokens, as transformers' generation does)."""
    options = {"maps": "all", "vision_maps": "all", "map_dtype": "float32"} if maps else {"kernel": "auto"}
    trace = workbench.trace(mllama, PROMPT, image=image, max_new_tokens=NEW_TOKENS, **options)
    extra = dict(prepare_input(mllama, PROMPT, image).model_inputs)
    ids = torch.tensor([[token.id for token in trace.tokens]])
    mask = extra["cross_attention_mask"]
    extra["cross_attention_mask"] = torch.cat([mask, mask[:, -1:].expand(-1, ids.shape[1] - mask.shape[1], -1, -1)], 1)
    return trace, eager_calls(mllama.model, input_ids=ids, **extra)


@pytest.mark.parametrize("maps", [True, False], ids=["maps", "statistics-only"])
@pytest.mark.parametrize("shape", list(IMAGES))
def test_every_attention_call_equals_eager(mllama, shape, maps):
    trace, calls = _trace_and_reference(mllama, coded_image(*IMAGES[shape]), maps=maps)
    stacks = trace.meta["dims"]["stacks"]
    assert set(stacks) == {"text", "cross", "vision"}
    assert (stacks["text"]["layers"], stacks["cross"]["layers"], stacks["vision"]["layers"]) == (2, 1, 3)
    for layer in range(2):  # self-attention: text x text, causal
        (eager,) = calls["text", layer]
        stats = trace.layer(layer)
        if maps:
            assert_close(stats["maps"], eager[0], what=f"text {layer} maps")
        visible = (eager[0] > 0).any(0)
        for stat, value in statistics_from_maps(eager[0], trace.regions, causal=True, visible=visible).items():
            assert_close(stats[stat], value, what=f"text {layer} {stat}")
    # cross-attention: the prompt call, then one call per decode step, all over the same image-feature keys
    eager = torch.cat([call[0] for call in calls["cross", 0]], dim=1)  # [head, query_pos, key_pos]
    n_keys = eager.shape[-1]
    assert n_keys == stacks["cross"]["key_positions"] == 4 * 17  # max tiles x ([CLS] + 4 x 4 patches)
    stats = trace.layer(0, "cross")
    if maps:
        assert_close(stats["maps"], eager, what="cross maps")
    visible = torch.ones(eager.shape[1:], dtype=torch.bool)  # a rectangular mask: hidden keys get weight 0
    reference = statistics_from_maps(eager, _key_regions(n_keys, 17, 17), causal=False, visible=visible)
    for stat in ("key_mass", "region_mass", "entropy", "normaliser"):
        assert_close(stats[stat], reference[stat], what=f"cross {stat}")
    for layer in range(3):  # the tower: one call over all tiles, each padded from 17 to 24 positions
        (eager,) = calls["vision", layer]
        stats = trace.layer(layer, "vision")
        if maps:
            assert_close(stats["maps"], eager[0], what=f"vision {layer} maps")
        reference = statistics_from_maps(eager[0], _key_regions(eager.shape[-1], 24, 17), causal=False)
        for stat in ("entropy", "key_mass", "region_mass"):
            assert_close(stats[stat], reference[stat], what=f"vision {layer} {stat}")
    run = trace.meta["capture"]["kernels_run"]
    assert set(run) == {"text", "cross", "vision"}
    if maps:
        assert all(set(kernels) == {"torch"} for kernels in run.values())
    else:  # the cross mask gives each row one run of keys; the tower's padding does not, and info says why
        from workbench.kernels import fused_cpu

        assert ("one-pass" in run["cross"] and "one-pass" in run["text"]) == bool(fused_cpu.load())
        assert set(run["vision"]) == {"torch"}
        (reason,) = trace.meta["capture"]["kernel_fallbacks"]["vision"]
        assert "contiguous" in reason


def test_top_keys_of_the_cross_stack(mllama):
    """--top-k over the cross stack names image-feature key positions: against the eager maps' own top keys."""
    image = coded_image(*IMAGES["tall"])
    trace = workbench.trace(mllama, PROMPT, image=image, top_k=3)
    extra = dict(prepare_input(mllama, PROMPT, image).model_inputs)
    ids = torch.tensor([[token.id for token in trace.tokens]])
    (eager,) = eager_calls(mllama.model, input_ids=ids, **extra)["cross", 0]
    stats = trace.layer(0, "cross")
    expected = eager[0].topk(3, dim=-1)
    assert_close(stats["top_weight"], expected.values, what="cross top weights")
    picked = eager[0].gather(-1, stats["top_index"])  # ties may swap indices; their weights must agree
    assert_close(picked, expected.values, what="cross top keys")


def test_cross_keys_carry_planted_tile_row_col(mllama):
    """Codes (tile, row, col) planted in the projector's output, read back from the keys the cross-attention
    layer receives: the trace's key labels must name them."""
    model = mllama.model
    image = coded_image(*IMAGES["wide"])
    prepared = prepare_input(mllama, PROMPT, image)
    side = 4
    seen = {}

    def plant(module, args, output):  # [batch, image, tile, 1 + side * side, d]
        codes = torch.zeros_like(output)
        for tile in range(output.shape[2]):
            for k in range(output.shape[3]):
                row, col = divmod(k - 1, side) if k else (-1, -1)
                codes[0, 0, tile, k, :3] = torch.tensor([tile, row, col], dtype=codes.dtype)
        return codes

    def read(module, args, kwargs):
        seen["states"] = kwargs["cross_attention_states"].flatten(0, -2)[:, :3].round().long()  # keys in order

    layer = model.model.language_model.layers[1]
    handles = [model.model.multi_modal_projector.register_forward_hook(plant),
               layer.register_forward_pre_hook(read, with_kwargs=True)]
    try:
        with torch.no_grad():
            model(input_ids=prepared.input_ids, **prepared.model_inputs)
    finally:
        for handle in handles:
            handle.remove()
    trace = workbench.trace(mllama, PROMPT, image=image)
    labels = trace.meta["dims"]["stacks"]["cross"]["key_places"]
    expected = [[tile, row, col] if row >= 0 else [tile] for tile, row, col in seen["states"].tolist()]
    assert labels == expected
    assert [t.region for t in trace.tokens].count("image") == 1  # the one <|image|> token, without a patch
    assert all(t.patch is None for t in trace.tokens)


def test_without_image_the_cross_stack_is_absent(mllama):
    """Without an image Mllama skips its cross-attention layers: the trace has no cross stack; VHD's run without
    the image is that trace's forward, equal to eager."""
    trace = workbench.trace(mllama, PROMPT, max_new_tokens=2, maps="all", map_dtype="float32")
    assert set(trace.meta["dims"]["stacks"]) == {"text"}
    ids = torch.tensor([[token.id for token in trace.tokens]])
    calls = eager_calls(mllama.model, input_ids=ids)
    assert not any(stack == "cross" for stack, _ in calls)
    for layer in range(2):
        assert_close(trace.layer(layer)["maps"], calls["text", layer][0][0], what=f"text {layer} without image")


def _head_outputs(mllama, **inputs) -> torch.Tensor:
    """[layer, head, d_model] at the last row of each self-attention layer (eager)."""
    layers = [layer for layer in mllama.model.model.language_model.layers if hasattr(layer, "self_attn")]
    return eager_head_outputs(mllama.model, layers, 4, **inputs)


def test_vhd_without_image_run(mllama):
    """VHD's text-only run (the <|image|> token removed, so no cross-attention layer runs) and its with-image run,
    each self-attention head's contribution at the prompt's last row, against eager forwards."""
    from workbench.analyses import divergence

    image = coded_image(*IMAGES["wide"])
    result = divergence.vhd(mllama, PROMPT, image, max_new_tokens=1)
    prepared = prepare_input(mllama, PROMPT, image)
    ids = prepared.input_ids
    without_ids = ids[:, ids[0] != mllama.model.config.image_token_id]
    with_image = _head_outputs(mllama, input_ids=ids, **prepared.model_inputs)
    without = _head_outputs(mllama, input_ids=without_ids)
    cosine = torch.nn.functional.cosine_similarity(with_image.double(), without.double(), dim=-1)
    assert result.cost["text_only_tokens"] == without_ids.shape[1] < ids.shape[1]
    assert result.vhd.shape[1:] == (2, 4)  # the self-attention layers: the text stack
    assert (result.vhd[0].double() - (1 - cosine)).abs().max() < 1e-4


def test_bundle_round_trip_and_info(mllama, tmp_path):
    """The cross stack (rectangular: rows over image-feature keys) survives a bundle, its manifest check and
    `workbench info`, which names the kernel each stack ran."""
    from tests.workbench.cli.cli_inprocess import run_cli

    trace = workbench.trace(mllama, PROMPT, image=coded_image(*IMAGES["tall"]), max_new_tokens=1, maps="all")
    path = trace.save(tmp_path / "m.wbtrace")
    loaded = workbench.load(path)
    assert loaded.meta["dims"]["stacks"] == trace.meta["dims"]["stacks"]
    for stat in ("maps", "key_mass", "key_count", "entropy", "region_mass", "region_count"):
        assert torch.equal(loaded.layer(0, "cross")[stat], trace.layer(0, "cross")[stat])
    assert loaded.layer(0, "cross")["maps"].shape == (4, len(trace.tokens), 68)
    code, out, err = run_cli("info", path)
    assert code == 0, err
    stack_line = f"cross      1 layers x 4 heads (2 kv heads), {len(trace.tokens)} positions over 68 image-feature keys"
    assert stack_line in out
    assert "cross torch x2" in out  # full maps: the two-pass path, said per stack


def test_replay_equals_eager(mllama):
    """Replay (the app's recompute of a bundle traced without maps) of the cross layer, of the self-attention layer
    after it and of the global tower layer, against the eager maps of the whole traced sequence: the replay's
    forward repeats the cross-attention mask's last row over the generated tokens, as generation did."""
    image = coded_image(*IMAGES["wide"])
    trace, calls = _trace_and_reference(mllama, image, maps=False)
    tracer = workbench.Tracer.open(mllama)
    for stack, layer in (("cross", 0), ("text", 1), ("vision", 2)):
        (replayed,) = tracer.replay(trace, layers=[layer], stack=stack, image=image).values()
        (eager,) = calls[stack, layer]
        assert_close(replayed.maps, eager[0], what=f"replayed {stack} {layer}")


def test_key_regions_and_summaries(mllama):
    """The regions readers give the cross keys and the padded tower positions ([CLS] and padding special, patches
    image); the JSON export and the stored-statistics health check read the cross stack."""
    from workbench.traces.health import stored_health
    from workbench.traces.names import stack_key_regions
    from workbench.traces.summary import export_json

    trace = workbench.trace(mllama, PROMPT, image=coded_image(*IMAGES["wide"]), max_new_tokens=1)
    stacks = trace.meta["dims"]["stacks"]
    assert torch.equal(stack_key_regions(stacks["cross"]), _key_regions(68, 17, 17))
    assert torch.equal(stack_key_regions(stacks["vision"]), _key_regions(96, 24, 17))
    summary = export_json(trace)["summary"]["cross"]
    assert [entry["layer"] for entry in summary] == [0]
    assert stored_health(trace).healthy
    from workbench.scale.features import head_rows

    rows = head_rows(trace)
    assert sum(row["stack"] == "cross" for row in rows) == 4  # one layer x 4 heads


def test_map_memory_check_counts_the_cross_and_tower_maps(mllama):
    """The memory check before capture counts at least the maps a trace stores: a budget of exactly the stored
    maps' bytes is refused, naming the cross stack's rectangle; the tower counts all of its padded tiles."""
    from workbench.errors import ResourceError

    image = coded_image(*IMAGES["wide"])
    trace = workbench.trace(mllama, PROMPT, image=image, maps="all", vision_maps="all", map_dtype="float32")
    stored = sum(trace.layer(layer, stack)["maps"].numel() * 4 for stack in ("text", "cross", "vision")
                 for layer in range(trace.meta["dims"]["stacks"][stack]["layers"]))
    with pytest.raises(ResourceError) as refused:
        workbench.trace(mllama, PROMPT, image=image, maps="all", vision_maps="all", map_dtype="float32",
                        max_map_memory=stored)
    assert f"1 cross layer x 4 heads at {len(trace.tokens)} x 68 positions" in str(refused.value)
    assert "3 vision layers x 4 heads at 96 positions" in str(refused.value)


@pytest.mark.parametrize("edit", ["key_positions", "key_places", "tile_positions"])
def test_tampered_rectangular_dims_are_refused(mllama, tmp_path, edit):
    """A manifest whose cross keys or tower tiles disagree with its tensors fails its check in one line."""
    import json

    from workbench.errors import BundleError

    trace = workbench.trace(mllama, PROMPT, image=coded_image(*IMAGES["wide"]))
    path = trace.save(tmp_path / "m.wbtrace")
    manifest = json.loads((path / "manifest.json").read_text())
    stacks = manifest["dims"]["stacks"]
    if edit == "key_positions":
        stacks["cross"]["key_positions"] = 67
    elif edit == "key_places":
        stacks["cross"]["key_places"] = stacks["cross"]["key_places"][:-1]
    else:
        stacks["vision"]["tile_positions"] = [0, 17]
    (path / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(BundleError) as refused:
        workbench.load(path)
    assert edit.split("_")[0] in str(refused.value) and "\n" not in str(refused.value)


def test_nnsight_backend_refuses_cross_attention_in_one_line(mllama):
    from workbench.errors import InputError

    with pytest.raises(InputError) as refused:
        workbench.Tracer.open(mllama, backend="nnsight")
    assert "cross-attention" in str(refused.value) and "--backend hf" in str(refused.value)


def test_real_config_passes_the_checks_before_loading():
    """The 11B checkpoint's config (transformers' defaults): accepted before any weights load, and the stacks a
    capture plan is checked against come from the config's own layer lists."""
    from transformers import MllamaConfig

    from workbench.capture.layout import stack_shapes
    from workbench.models.loading import check_supported

    config = MllamaConfig()
    check_supported(config, "here")
    cross = len(config.text_config.cross_attention_layers)
    vision = config.vision_config
    assert stack_shapes(config) == {
        "text": (config.text_config.num_hidden_layers - cross, 32, 8, 4096), "cross": (cross, 32, 8, 4096),
        "vision": (vision.num_hidden_layers + vision.num_global_layers, 16, 16, 1280)}
