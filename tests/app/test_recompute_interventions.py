"""Maps recomputed for a bundle traced under an intervention (ACT, VAR), through the app's recompute path, against
the maps the capture itself stored in the same edited run (an independent path: the recorder while tracing with
the KV cache, one forward per generated token, not the replay); the refusals of what cannot be replayed exactly;
and the re-trace command, which keeps the intervention."""

from __future__ import annotations

import io
import shlex

import pytest
import torch
from PIL import Image
from workbench.app.data.recompute import ModelPool, layers_maps, token_rows

import workbench
from tests.app.app_helpers import png_bytes
from tests.workbench.cli.cli_inprocess import run_cli
from workbench.capture import Tracer
from workbench.errors import InputError
from workbench.interventions import ACT, VAR, parse, recorded
from workbench.traces.names import tensor_name
from workbench.traces.retrace import intervene_spec, retrace

TOLERANCE = 1e-5
NEW_TOKENS = 4
# Both edit layer 0 onwards, so layers 1 and 2 of the edited run see inputs the plain model never produces (with
# the defaults, first_layer=2, a 3-layer fixture would only edit its last layer and no map would change).
CASES = {
    "act": ("tiny-llama", "The cat sat on the mat and looked at the dog", False,
            ACT(beta=0.2, threshold=0.01, first_layer=0, min_queries=1)),
    "var": ("tiny-llava", "Describe the picture", True,
            VAR(dims=(12, 10), tau=2.0, first_layer=0, except_last_layer=False, summ=0.0, rho=0.0, p=0.2)),
}


@pytest.fixture(scope="module", params=sorted(CASES))
def case(request, tmp_path_factory):
    """(tracer, spec, edited run with every map stored, the same edited run with statistics only), both read back
    from disk, so the replay sees the manifest as a user's bundle has it."""
    model, prompt, with_image, spec = CASES[request.param]
    folder = tmp_path_factory.mktemp(request.param)
    tracer = Tracer.open(model)
    image = Image.open(io.BytesIO(png_bytes())) if with_image else None
    options = {"max_new_tokens": NEW_TOKENS, "intervention": spec}
    maps = {"maps": "all", "map_dtype": "float32", **({"vision_maps": "all"} if with_image else {})}
    tracer.trace(prompt, image, **maps, **options).save(folder / "maps.wbtrace")
    tracer.trace(prompt, image, **options).save(folder / "stats.wbtrace")
    return tracer, spec, workbench.load(folder / "maps.wbtrace"), workbench.load(folder / "stats.wbtrace")


def stored_maps(trace, layer: int) -> torch.Tensor:
    return trace.tensor(tensor_name("text", layer, "maps")).float()


def test_the_edit_reaches_later_layers(case):
    """The cases have power: layers before the last are edited, so the unedited model's maps of later layers over
    the very same tokens (what a replay ignoring the intervention computes) are far from the stored ones."""
    tracer, _, with_maps, stats = case
    report = stats.meta["capture"]["intervention"]["report"]
    assert any(head["layer"] < stats.n_layers("text") - 1 and head["rows"] > 0 for head in report["heads"])
    unedited = workbench.load(stats.path)
    del unedited.meta["capture"]["intervention"]
    replayed = tracer.replay(unedited, layers=[2], image=unedited.image())
    assert float((replayed[2].maps - stored_maps(with_maps, 2)).abs().max()) > 0.1


def test_recomputed_maps_equal_the_maps_stored_in_the_edited_run(case):
    tracer, _, with_maps, stats = case
    assert [t.id for t in stats.tokens] == [t.id for t in with_maps.tokens]
    assert stats.meta["generation"]["start"] < len(stats.tokens)  # generated rows: the replay's cached forward
    recomputed = layers_maps(stats, range(stats.n_layers("text")), model=tracer, image=stats.image())
    for layer, result in recomputed.items():
        error = float((result.maps - stored_maps(with_maps, layer)).abs().max())
        assert error < TOLERANCE, f"layer {layer}: max |recomputed - stored| = {error:.3g}"
        assert result.mismatch < TOLERANCE  # no mismatch warning against the stored statistics


def test_recomputed_vision_maps_equal_the_stored_ones(case):
    """The vision tower runs in the prompt's forward only (no intervention edits it): its replay stops there."""
    tracer, _, with_maps, stats = case
    if "vision" not in stats.dims["stacks"]:
        pytest.skip("a text model has no vision tower")
    layers = range(stats.n_layers("vision"))
    recomputed = layers_maps(stats, layers, stack="vision", model=tracer, image=stats.image())
    for layer in layers:
        stored = with_maps.tensor(tensor_name("vision", layer, "maps")).float()
        assert float((recomputed[layer].maps - stored).abs().max()) < TOLERANCE


@pytest.mark.parametrize("where", ["prompt", "generated"])
def test_recomputed_token_rows_equal_the_stored_rows(case, where):
    tracer, _, with_maps, stats = case
    start = stats.meta["generation"]["start"]
    position = start - 2 if where == "prompt" else len(stats.tokens) - 2
    rows = token_rows(stats, position, model=tracer, image=stats.image())
    stored = torch.stack([stored_maps(with_maps, layer)[:, position] for layer in range(stats.n_layers("text"))])
    assert float((rows.rows - stored).abs().max()) < TOLERANCE
    assert rows.mismatch < TOLERANCE


def test_the_manifest_rebuilds_the_very_spec(case):
    _, spec, _, stats = case
    assert recorded(stats.meta) == spec
    assert parse(intervene_spec(stats.meta["capture"]["intervention"])) == spec


def test_replay_without_the_recorded_intervention_is_refused(case):
    tracer, spec, _, stats = case
    with pytest.raises(InputError, match=f"traced under intervention '{spec.name}'") as refused:
        tracer.replay(stats, layers=[1], image=stats.image())
    assert "\n" not in str(refused.value)
    other = ACT(beta=0.9) if spec.name == "var" else ACT(beta=0.5, threshold=0.01, first_layer=0, min_queries=1)
    with pytest.raises(InputError, match="differs from the one this bundle was traced under"):
        tracer.replay(stats, layers=[1], image=stats.image(), intervention=other)


def test_a_plain_bundle_replayed_with_an_intervention_is_refused(models):
    plain = workbench.trace(models("tiny-llama"), "Hello there", max_new_tokens=1)
    with pytest.raises(InputError, match="traced without an intervention"):
        Tracer.open(models("tiny-llama")).replay(plain, layers=[0], intervention=ACT())


class _NoLoading(ModelPool):
    def get(self, name):
        raise AssertionError(f"{name} was loaded before the bundle's intervention record was checked")


@pytest.mark.parametrize("damage", ["missing option", "unknown name"])
def test_an_old_record_that_cannot_be_rebuilt_is_refused_before_any_model_loads(case, damage):
    _, _, _, stats = case
    old = workbench.load(stats.path)
    record = old.meta["capture"]["intervention"]
    if damage == "missing option":
        del record["first_layer"]
        message = "without its first_layer"
    else:
        record["name"] = "vhr"
        message = "intervention 'vhr', which this workbench cannot rebuild"
    for recompute in (lambda: layers_maps(old, [1], pool=_NoLoading()),
                      lambda: token_rows(old, 1, pool=_NoLoading())):
        with pytest.raises(InputError, match=message) as refused:
            recompute()
        assert "\n" not in str(refused.value) and "--maps" in str(refused.value)


def test_the_retrace_command_keeps_the_intervention(tmp_path):
    spec = CASES["act"][3]
    first = workbench.trace("tiny-llama", "The cat sat", max_new_tokens=2, raw=True, intervention=spec)
    bundle = first.save(tmp_path / "edited.wbtrace")
    again = retrace(workbench.load(bundle).meta, bundle, ["--hidden"])
    code, _, err = run_cli(*shlex.split(again.command)[1:])
    assert code == 0, err
    second = workbench.load(again.out)
    assert recorded(second.meta) == spec
    assert [t.id for t in second.tokens] == [t.id for t in first.tokens]
