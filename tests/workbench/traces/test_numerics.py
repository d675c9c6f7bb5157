"""Numerics health: NaN/Inf or a normaliser Z far from 1 is flagged in the manifest (at capture), found again
from the stored statistics (an edited bundle), and shown by `workbench info` and on every page of the app."""

from __future__ import annotations

import json

import pytest
import torch

import workbench
from tests.workbench.cli.cli_inprocess import run_cli


@pytest.fixture(scope="module")
def planted(models, tmp_path_factory):
    """tiny-llama with +inf written into the input of layer 1's attention at position 3 (an fp16 overflow
    stand-in); a clean trace of the same prompt; and the clean one saved with layer 2's Z edited to 1.5."""
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("numerics")
    loaded = models("tiny-llama")
    prompt = "Numbers can overflow"

    def overflow(module, args, output):
        if output.shape[1] > 3:  # the prompt forward; generation steps see one new token each
            output = output.clone()
            output[:, 3] = float("inf")
        return output

    handle = loaded.model.model.layers[1].input_layernorm.register_forward_hook(overflow)
    try:
        broken = workbench.trace(loaded, prompt, max_new_tokens=2)
    finally:
        handle.remove()
    broken.save(root / "overflow.wbtrace")
    clean = workbench.trace(loaded, prompt, max_new_tokens=2)
    clean.save(root / "clean.wbtrace")
    clean.save(root / "edited.wbtrace")
    _scale_normaliser(root / "edited.wbtrace", layer=2, factor=1.5)
    return root, broken, clean


def _scale_normaliser(bundle, *, layer: int, factor: float) -> None:
    """Rewrite the text shard with layer's Z scaled (same shard metadata, manifest sizes and checksums updated)."""

    def scale(tensors):
        tensors["normaliser"] = tensors["normaliser"] * factor

    _edit_shard(bundle, layer=layer, edit=scale)


def test_capture_flags_non_finite_statistics_where_they_start(planted):
    root, _, clean = planted
    assert clean.checks["healthy"] and clean.checks["flagged"] == [] and clean.checks["non_finite"] == 0
    checks = json.loads((root / "overflow.wbtrace" / "manifest.json").read_text())["checks"]
    assert checks["healthy"] is False and checks["non_finite"] > 0
    # Ground truth: the inf enters at layer 1; layer 0 ran before it and stays clean.
    assert "text layer 1" in checks["flagged"] and "text layer 0" not in checks["flagged"]
    stored = workbench.load(root / "overflow.wbtrace").layer(1)
    planted_count = sum(int((~torch.isfinite(stored[name])).sum())
                        for name in ("key_mass", "region_mass", "entropy", "normaliser"))
    assert planted_count > 0


def test_stored_statistics_are_rechecked(planted):
    from workbench.traces.health import health, stored_health

    root, _, _ = planted
    edited = workbench.load(root / "edited.wbtrace")
    assert edited.checks["healthy"]  # the manifest still claims health ...
    found = stored_health(edited)  # ... the data says otherwise, at the edited layer only
    assert found.flagged == ["text layer 2"] and found.max_normaliser_error == pytest.approx(0.5, abs=1e-4)
    assert not health(edited).healthy
    assert health(workbench.load(root / "clean.wbtrace")).healthy


@pytest.mark.parametrize("name, where", [("overflow", "text layer 1"), ("edited", "text layer 2")])
def test_info_shows_the_failed_check(planted, name, where):
    root, _, _ = planted
    code, out, err = run_cli("info", root / f"{name}.wbtrace")
    assert code == 0, err
    assert "UNHEALTHY" in out and where in " ".join(out.split())  # rich wraps long lines
    assert err.startswith("warning: ") and "numerics check failed" in err and where in err
    code, out, err = run_cli("info", root / "clean.wbtrace")
    assert code == 0 and "healthy" in out and "UNHEALTHY" not in out and not err


def test_every_bundle_page_of_the_app_warns(planted):
    from workbench.app import create_app
    from workbench.app.pages import PAGES

    root, _, _ = planted
    app = create_app(root, allow_trace=False, allow_recompute=False)

    def text(component) -> str:
        return json.dumps(component.to_plotly_json(), default=lambda o: o.to_plotly_json()
                          if hasattr(o, "to_plotly_json") else str(o))

    with app.server.test_request_context():
        for page in PAGES[1:]:  # every page that shows one bundle
            for bundle in ("overflow", "edited"):
                shown = text(page.layout(bundle=bundle))
                assert "wb-health" in shown and "Numerics check failed" in shown, (page.name, bundle)
            # b: the Compare page's second bundle (other pages ignore it); a clean pair shows no warning
            assert "wb-health" not in text(page.layout(bundle="clean", b="clean")), page.name


def _edit_shard(bundle, *, layer: int, edit) -> None:
    """Rewrite one layer's tensors in the text shard with `edit(tensors)`, tensors keyed by stat (manifest sizes
    and checksums updated)."""
    import xxhash
    from safetensors import safe_open
    from safetensors.torch import save_file

    relative, prefix = "tensors/text.safetensors", f"layer_{layer:02d}."
    with safe_open(str(bundle / relative), framework="pt") as shard:
        metadata, tensors = shard.metadata(), {key: shard.get_tensor(key) for key in shard.keys()}
    own = {key[len(prefix):]: tensor for key, tensor in tensors.items() if key.startswith(prefix)}
    edit(own)
    tensors.update({prefix + stat: tensor for stat, tensor in own.items()})
    save_file(tensors, str(bundle / relative), metadata=metadata)
    manifest = json.loads((bundle / "manifest.json").read_text())
    data = (bundle / relative).read_bytes()
    manifest["files"][relative] = {"bytes": len(data), "xxh3_128": xxhash.xxh3_128(data).hexdigest()}
    (bundle / "manifest.json").write_text(json.dumps(manifest))


def _unrecorded_row(tensors):  # what a missed attention call leaves: zeros everywhere in that row
    for name in ("normaliser", "entropy"):
        tensors[name] = tensors[name].clone()
        tensors[name][:, 4] = 0
    for name in ("region_mass", "region_count"):
        if name not in tensors:  # counts shared by the layers of one mask are stored under layer 0's name
            continue
        tensors[name] = tensors[name].clone()
        tensors[name][..., 4, :] = 0


def _zero_normaliser(tensors):  # the row sees keys (region_count kept) but its weights sum to 0
    tensors["normaliser"] = tensors["normaliser"].clone()
    tensors["normaliser"][:, 2] = 0


@pytest.mark.parametrize("edit, rows", [(_unrecorded_row, 1), (_zero_normaliser, 1)])
def test_unrecorded_or_empty_rows_are_unhealthy(planted, tmp_path, edit, rows):
    """A row whose Z is 0, or a row that was never recorded, fails the check (it once passed: only rows that saw
    a key were checked). Ground truth: every row of a causal single-input trace sees itself, so Z = 1 everywhere."""
    from workbench.traces.health import health, stored_health

    _, _, clean = planted
    clean.save(tmp_path / "hole.wbtrace")
    _edit_shard(tmp_path / "hole.wbtrace", layer=1, edit=edit)
    found = stored_health(workbench.load(tmp_path / "hole.wbtrace"))
    assert not found.healthy and found.flagged == ["text layer 1"] and found.unrecorded_rows == rows
    assert found.max_normaliser_error == pytest.approx(1.0)
    assert not health(workbench.load(tmp_path / "hole.wbtrace")).healthy
    code, out, err = run_cli("info", tmp_path / "hole.wbtrace")
    assert code == 0 and "UNHEALTHY" in out and "never recorded" in " ".join(err.split()), (out, err)


def test_every_row_of_a_clean_trace_has_z_one(planted):
    """The independent count: Z = 1 within the tolerance on every stored row, and the capture's verdict agrees."""
    from workbench.traces.health import Z_TOLERANCE, stored_health

    _, _, clean = planted
    for layer in range(clean.n_layers()):
        z = clean.layer(layer)["normaliser"].double()
        assert z.shape[-1] == len(clean.tokens) and ((z - 1).abs() < Z_TOLERANCE).all()
    assert clean.checks["unrecorded_rows"] == 0 and clean.checks["healthy"]
    assert stored_health(clean).healthy and stored_health(clean).unrecorded_rows == 0


def test_capture_flags_a_layer_it_never_recorded(models, monkeypatch):
    """A capture whose attention call of one layer is lost (as on a sliding-window model whose calls bypassed
    the recorder) writes an unhealthy manifest naming that layer."""
    from workbench.capture.recorder import Recorder

    original = Recorder._record

    def losing(self, call, stats, **kwargs):
        if call["stack"] == "text" and call["layer"] == 1 and call["start"] == 0:
            self._layer_buffers("text", 1)  # the layer exists in the bundle, its prompt rows stay empty
            return
        original(self, call, stats, **kwargs)

    monkeypatch.setattr(Recorder, "_record", losing)
    trace = workbench.trace(models("tiny-llama"), "Rows can go missing", max_new_tokens=1)
    assert trace.checks["healthy"] is False and trace.checks["unrecorded_rows"] > 0
    assert "text layer 1" in trace.checks["flagged"]
