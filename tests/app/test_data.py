"""Server-side data of the app: catalog and its id checks, metrics and recomputed maps against HF eager
attention (an independent computation), display windows against naive loops, results parsing, images,
uploads and trace jobs."""

from __future__ import annotations

import base64
import io
import os
import shutil

import numpy as np
import pytest
import torch
from workbench.app.data import results as results_mod
from workbench.app.data.catalog import Catalog
from workbench.app.data.images import ImageFinder, decode_upload
from workbench.app.data.maps import clamp_range, pool_columns, window
from workbench.app.data.metrics import statistics_metrics
from workbench.app.data.recompute import layer_maps, token_rows
from workbench.app.data.uploads import Uploads

import workbench
from tests.app.app_helpers import png_bytes
from tests.helpers import eager_forward
from workbench.errors import BundleError, InputError


@pytest.fixture(scope="module")
def eager(models, traces_dir):
    """HF eager maps [layer][head, q, k] of the two tiny-llama bundles (one forward over their token ids)."""
    out = {}
    for name in ("llama-maps", "llama-stats"):
        trace = workbench.load(traces_dir / f"{name}.wbtrace")
        ids = torch.tensor([[t.id for t in trace.tokens]])
        result = eager_forward(models("tiny-llama").model, input_ids=ids)
        out[name] = [a[0].double() for a in result.attentions]
    return out


# ----------------------------------------------------------------------------------------------- catalog
def test_catalog_lists_nested_bundles_and_keeps_corrupt_ones_with_the_file(traces_dir):
    infos = {info.id: info for info in Catalog(traces_dir).scan()}
    assert {"llama-maps", "llama-stats", "vlm/llava", "broken"} <= set(infos)
    assert infos["broken"].error and "broken.wbtrace/manifest.json" in infos["broken"].error
    assert infos["llama-maps"].map_layers == {"text": [0, 1, 2]}
    assert infos["vlm/llava"].kind == "vlm" and infos["vlm/llava"].image_sha256
    assert set(infos["llama-stats"].results) == {"routes", "circuits"}


@pytest.mark.parametrize("bad", ["../llama-maps", "/etc/passwd", "llama-maps/../llama-maps", "llama-maps.wbtrace",
                                 "", None, 7, ["llama-maps"], "vlm/../broken", "%2e%2e/llama-maps"])
def test_ids_are_looked_up_never_joined_onto_paths(traces_dir, bad):
    with pytest.raises(BundleError):
        Catalog(traces_dir).open(bad)


def test_symlinks_and_staging_folders_are_not_bundles(traces_dir, tmp_path):
    root = tmp_path / "root"
    root.mkdir()
    outside = tmp_path / "outside.wbtrace"
    shutil.copytree(traces_dir / "llama-maps.wbtrace", outside)
    os.symlink(outside, root / "linked.wbtrace")
    os.symlink(tmp_path, root / "loop")
    shutil.copytree(traces_dir / "llama-maps.wbtrace", root / ".staging.wbtrace")
    shutil.copytree(traces_dir / "llama-maps.wbtrace", root / "real.wbtrace")
    assert Catalog(root).ids() == ["real"]


def test_a_replaced_bundle_is_not_served_stale(traces_dir, tmp_path):
    shutil.copytree(traces_dir / "llama-maps.wbtrace", tmp_path / "b.wbtrace")
    catalog = Catalog(tmp_path, ttl=0)
    first = catalog.open("b")
    workbench.load(traces_dir / "llama-stats.wbtrace").save(tmp_path / "b.wbtrace", force=True)
    second = catalog.open("b")
    assert len(second.tokens) != len(first.tokens)


# ----------------------------------------------------------------------------------------------- metrics
def test_statistics_metrics_equal_a_direct_computation_from_eager_maps(traces_dir, eager):
    trace = workbench.load(traces_dir / "llama-stats.wbtrace")
    metrics = statistics_metrics(trace)
    regions = [t.region for t in trace.tokens]
    generated = np.array([r == "generated" for r in regions])
    prompt = np.array([r == "prompt" for r in regions])
    start, end = trace.generation["start"], trace.generation["end"]
    for layer, maps in enumerate(eager["llama-stats"]):
        a = maps.numpy()
        n = a.shape[-1]
        plogp = np.where(a > 0, a * np.log(np.where(a > 0, a, 1)), 0)
        np.testing.assert_allclose(metrics["sink"].values[layer], a[:, :, 0].sum(1) / n, atol=1e-5)
        np.testing.assert_allclose(metrics["entropy"].values[layer], (-plogp.sum(-1)).mean(1), atol=1e-4)
        np.testing.assert_allclose(metrics["share:prompt"].values[layer], a[:, :, prompt].sum(-1).mean(1), atol=1e-5)
        ratios = []
        for row in range(start - 1, end - 1):
            seen = np.arange(n) <= row
            c = a[:, row, seen & ~generated].sum(-1) / (seen & ~generated).sum()
            g_count = (seen & generated).sum()
            g = a[:, row, seen & generated].sum(-1) / g_count if g_count else np.zeros(a.shape[0])
            ratios.append(c / (c + g))
        np.testing.assert_allclose(metrics["lookback"].values[layer], np.mean(ratios, axis=0), atol=1e-5)
        gen_rows = a[:, start - 1:end - 1]
        np.testing.assert_allclose(metrics["gen_generated"].values[layer], gen_rows[:, :, generated].sum(-1).mean(1),
                                   atol=1e-5)


def test_result_metrics_and_missing_analyses_in_the_model_view(store):
    metrics, warnings = store.metrics("llama-stats")
    assert metrics["result:routes:route_frequency"].values.shape == (3, 6)
    assert metrics["result:routes:route_frequency"].values[1, 1] == 1.0
    assert np.isfinite(metrics["result:circuits:circuit_firings"].values).sum() == 2
    assert "missing:routes" not in metrics and not warnings
    missing, _ = store.metrics("llama-maps")
    assert "workbench routes" in missing["missing:routes"].hint and missing["missing:routes"].values is None
    assert "missing:vhd" not in missing  # VHD is offered for VLM bundles only
    assert "missing:vhd" in store.metrics("vlm/llava")[0]


# ------------------------------------------------------------------------------------------ maps / rows
def test_recomputed_layer_and_token_rows_equal_hf_eager(traces_dir, eager):
    trace = workbench.load(traces_dir / "llama-stats.wbtrace")
    for layer in range(trace.n_layers()):
        result = layer_maps(trace, layer)
        torch.testing.assert_close(result.maps.double(), eager["llama-stats"][layer], atol=1e-5, rtol=0)
        assert result.mismatch < 1e-4
    position = len(trace.tokens) - 3
    rows = token_rows(trace, position)
    expected = torch.stack([maps[:, position] for maps in eager["llama-stats"]])
    torch.testing.assert_close(rows.rows.double(), expected, atol=1e-5, rtol=0)
    assert rows.mismatch < 1e-4


def test_head_maps_stored_and_recomputed_both_match_eager(store, eager):
    stored = store.head_map("llama-maps", "text", 1, 2)
    assert stored.source == "stored" and "stored" in stored.note
    torch.testing.assert_close(stored.values.double(), eager["llama-maps"][1][2], atol=1e-5, rtol=0)
    recomputed = store.head_map("llama-stats", "text", 2, 4)
    assert recomputed.source == "recomputed" and recomputed.warning is None and "matches" in recomputed.note
    torch.testing.assert_close(recomputed.values.double(), eager["llama-stats"][2][4], atol=2e-3, rtol=0)  # fp16 cache


def test_vlm_recompute_needs_the_image_and_flags_a_wrong_one(store, traces_dir):
    trace = workbench.load(traces_dir / "vlm" / "llava.wbtrace")
    with pytest.raises(InputError, match="image"):
        layer_maps(trace, 0)
    from PIL import Image

    right = Image.open(io.BytesIO(png_bytes(0)))
    assert layer_maps(trace, 1, image=right).mismatch < 1e-4
    assert layer_maps(trace, 1, image=Image.open(io.BytesIO(png_bytes(5)))).mismatch > 1e-2
    assert store.image("vlm/llava") is not None  # found under images/ by its sha256
    assert store.head_map("vlm/llava", "vision", 1, 0).warning is None


def test_window_max_pools_like_a_naive_loop():
    full = torch.rand(103, 77)
    win = window(full, max_cells=10)
    assert win.values.shape == (10, 10) and (win.q_step, win.k_step) == (11, 8)
    for r in range(win.values.shape[0]):
        for c in range(win.values.shape[1]):
            block = full[r * 11:(r + 1) * 11, c * 8:(c + 1) * 8]
            assert win.values[r, c] == pytest.approx(float(block.max()))
    zoom = window(full, (10.2, 19.6), (3, 5), max_cells=10)
    assert (zoom.q0, zoom.q1, zoom.k0, zoom.k1, zoom.pooled) == (10, 21, 3, 6, True)
    small = window(full, (10, 19), (3, 5), max_cells=10)
    np.testing.assert_array_equal(small.values, full[10:20, 3:6].numpy())
    assert clamp_range((-50, 1e9), 10) == (0, 10) and clamp_range((float("nan"), 3), 10) == (0, 10)
    pooled, step = pool_columns(np.arange(10.0)[None], max_cells=4)
    assert step == 3 and pooled.tolist() == [[2.0, 5.0, 8.0, 9.0]]


# ----------------------------------------------------------------------------------------------- results
def test_results_are_read_defensively():
    grid = results_mod._grid([[1, 2], [3, None]], 2, 2)
    assert grid[0, 1] == 2 and np.isnan(grid[1, 1])
    assert results_mod._grid([[1, 2]], 2, 2) is None
    assert results_mod._grid([{"layer": 1, "head": 0, "value": 5}], 2, 2)[1, 0] == 5
    assert results_mod._grid([{"layer": 9, "head": 0, "value": 5}], 2, 2) is None
    metrics, warnings = results_mod.head_metrics({"x": {"head_metrics": {"m": {"values": [[1]]}}}, "y": {"head_metrics": 3}},
                                                 "text", 2, 2)
    assert not metrics and len(warnings) == 2
    parsed = results_mod.token_values([{"pos": 5, "score": 0.5}, {"pos": 99, "value": 1}, "x", {"pos": True, "value": 1}],
                                      n_tokens=10, gen_start=6, gen_end=10)
    assert parsed.value == {5: 0.5} and parsed.warnings
    assert results_mod.token_values([0.1, 0.2, 0.3, 0.4], n_tokens=10, gen_start=6, gen_end=10).value[9] == 0.4
    assert results_mod.token_values({"7": 0.3}, n_tokens=10, gen_start=6, gen_end=10).value == {7: 0.3}
    assert results_mod.positions([1, {"pos": 3}, "x", 99], 10) == [1, 3]
    bad = results_mod.graph({"nodes": [{"id": "a"}, {"x": 1}], "edges": [{"source": "a", "target": "zz"}]})
    assert bad.value.nodes == [{"id": "a"}] and not bad.value.edges and bad.warnings
    routes = results_mod.routes({"routes": [{"position": -1, "graph": {"nodes": [], "edges": []}}, 5]}, 10)
    assert list(routes.value) == [9] and routes.warnings


def test_route_nodes_link_to_heads(traces_dir):
    from workbench.app.figures.routes import route_figure

    trace = workbench.load(traces_dir / "llama-stats.wbtrace")
    position = len(trace.tokens) - 1
    route = results_mod.routes(trace.results["routes"], len(trace.tokens)).value[position]
    fig = route_figure(route, texts=[t.text for t in trace.tokens], n_layers=trace.n_layers(),
                       root=f"I{trace.n_layers() - 1}_{position}")
    nodes = {text.split("</b>")[0][3:]: (y, list(custom)) for t in fig.data if t.meta == "nodes"
             for y, custom, text in zip(t.y, t.customdata, t.hovertext)}
    assert nodes[f"A2_{position}"][0] > nodes[f"A0_{position}"][0]  # deeper is higher
    assert nodes[f"A2_{position}"][1] == [2, 2, position, f"A2_{position}"]  # the planted head of layer 2's edge opens


# ------------------------------------------------------------------------------------------------ images
def _upload(data: bytes, kind: str = "image/png") -> str:
    return f"data:{kind};base64,{base64.b64encode(data).decode()}"


def test_uploads_are_checked(tmp_path):
    data, extension = decode_upload(_upload(png_bytes()), "x.png")
    assert extension == ".png" and Uploads(tmp_path).store(data, extension).parent == tmp_path / ".uploads"
    for contents, message in ((_upload(b"not an image"), "Pillow"), ("data:image/png;base64,@@@", "base64"),
                              ("hello", "not a file"), (_upload(b""), "empty"),
                              (_upload(b"x" * 100), "larger")):
        with pytest.raises(InputError, match=message):
            decode_upload(contents, "x", max_bytes=50 if message == "larger" else 8 << 20)
    from PIL import Image

    buffer = io.BytesIO()
    Image.new("1", (9000, 9000)).save(buffer, format="PNG")  # tiny file, 81 M pixels
    with pytest.raises(InputError, match="pixels"):
        decode_upload(_upload(buffer.getvalue()), "bomb.png")


def test_images_are_only_found_under_allowed_folders(traces_dir, tmp_path):
    trace = workbench.load(traces_dir / "vlm" / "llava.wbtrace")
    assert ImageFinder([traces_dir]).find(trace) is not None
    assert ImageFinder([tmp_path]).find(trace) is None  # the manifest's source path is outside tmp_path
    meta = dict(trace.meta)
    meta["inputs"] = {**meta["inputs"], "image": {**meta["inputs"]["image"], "sha256": "../../etc/passwd"}}
    assert ImageFinder([traces_dir]).find(type(trace)(meta=meta, tokens=trace.tokens, tensors=None)) is None


# -------------------------------------------------------------------------------------------------- jobs
def test_trace_requests_are_validated():
    from workbench.app.data.jobs import validate

    cases = [(("/etc", "hi", 3), "list"), (("tiny-llama", "  ", 3), "empty"), (("tiny-llama", "x" * 9000, 3), "8000"),
             (("tiny-llama", "hi", 999), "between"), (("tiny-llama", "hi", "many"), "whole number"),
             (("tiny-llava", "hi", 3), "upload an image")]
    for args, message in cases:
        with pytest.raises(InputError, match=message):
            validate(*args)
    with pytest.raises(InputError, match="text-only"):
        validate("tiny-llama", "hi", 3, image="x.png")
    with pytest.raises(InputError, match="LAYERS:HEADS"):
        validate("tiny-llama", "hi", 3, maps="every layer")
    with pytest.raises(InputError, match="name"):
        validate("tiny-llama", "hi", 3, name="../up")
    assert validate("tiny-bert", "hi", 5).max_new_tokens == 0


def test_trace_jobs_write_a_bundle_or_report_the_error(tmp_path):
    from workbench.app.data.catalog import Catalog
    from workbench.app.data.jobs import TraceJobs, validate
    from workbench.app.data.recompute import ModelPool

    catalog = Catalog(tmp_path)
    jobs = TraceJobs(tmp_path, ModelPool(), catalog=catalog)
    done = jobs.wait(jobs.submit(validate("tiny-llama", "Hello there", 2, name="hello")), timeout=120)
    assert done["state"] == "done" and done["bundle_id"] == "hello" and "hello" in catalog.ids()
    again = jobs.wait(jobs.submit(validate("tiny-llama", "Hello there", 2, name="hello")), timeout=120)
    assert again["bundle_id"] == "hello-2"
    failed = jobs.wait(jobs.submit(validate("tiny-llama", "Hi", 1, maps="all:99")), timeout=120)
    assert failed["state"] == "error" and "heads" in failed["message"]
    assert jobs.status("nope") is None and jobs.status(None) is None


def test_vhd_files_old_and_new_put_t_vhd_on_the_generated_tokens(traces_dir, tmp_path):
    """A VHD result written before schema_version 2 stored each value at the predicting row; both layouts must
    land on the generated token they score (step s -> generation start + s) and give the same Model view."""
    from workbench.app.data.service import AppData
    from workbench.app.pages.hallucination import series_for

    shutil.copytree(traces_dir / "vlm" / "llava.wbtrace", tmp_path / "new.wbtrace")
    shutil.copytree(traces_dir / "vlm" / "llava.wbtrace", tmp_path / "old.wbtrace")
    new, old = workbench.load(tmp_path / "new.wbtrace"), workbench.load(tmp_path / "old.wbtrace")
    start, end = new.generation["start"], new.generation["end"]
    steps = end - start
    values = np.random.RandomState(0).rand(steps, new.n_layers(), new.n_heads()).round(6)
    t_vhd = [0.1 * (step + 1) for step in range(steps)]
    body = {"analysis": "vhd", "model": "tiny-llava", "options": {"top_k": 2}, "prompt": "", "vhd": values.tolist(),
            "t_vhd": t_vhd, "cost": {}, "vhr": None}
    tokens = [{"step": s, "id": t.id, "text": t.text} for s, t in enumerate(new.tokens[start:end])]
    new.add_result("vhd", {**body, "schema_version": 2,
                           "tokens": [{**t, "position": start + s, "predicting_row": start + s - 1}
                                      for s, t in enumerate(tokens)]})
    old.add_result("vhd", {**body, "tokens": [{**t, "position": start + s - 1} for s, t in enumerate(tokens)]})
    expected = {start + step: value for step, value in enumerate(t_vhd)}
    store = AppData(tmp_path)
    for name in ("new", "old"):
        series, notes = series_for(store.trace(name))
        assert series["vhd"] == pytest.approx(expected) and not any("could not be read" in str(n) for n in notes)
        metrics, warnings = store.metrics(name)
        np.testing.assert_allclose(metrics["result:vhd:vhd"].values, values.mean(0), atol=1e-6)
        assert not warnings and "missing:vhd" not in metrics


@pytest.mark.parametrize("name,data", [
    ("vhd", {"analysis": "vhd", "tokens": [{"position": "x"}], "vhd": [[[0.1]]], "t_vhd": [0.1]}),
    ("vhd", {"analysis": "vhd", "schema_version": 2, "tokens": [], "vhd": [[[0.1]]], "t_vhd": []}),
    ("vhd", {"analysis": "vhd", "schema_version": 2, "tokens": [{"position": "7"}], "vhd": [[[0.1]]], "t_vhd": [1]}),
    ("sinks", {"analysis": "sinks", "heads": [[0.5, 0.25]], "note": "planted"}),
    ("routes", {"analysis": "routes", "routes": [{"position": 1, "graph": {"nodes": 3}}]}),
    ("circuits", {"analysis": "circuits", "graph": None}),
    ("lookback", {"token_scores": [{"score": 0.5}]}),
    ("anything", {"analysis": "circuits", "schema_version": "2", "graph": {"nodes": [], "edges": []}}),
])
def test_malformed_results_are_a_warning_not_an_error(name, data):
    result, warnings = results_mod.read(name, data)
    assert result is None and len(warnings) == 1 and f"results/{name}.json" in warnings[0]
    metrics, head_warnings = results_mod.head_metrics({name: data}, "text", 2, 2)
    assert not metrics and head_warnings == warnings
