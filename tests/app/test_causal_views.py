"""The Causal, Rollout and Token-lens views against the stored results, recomputed here with plain numpy from the
JSON files themselves (not through the result classes): the patching effect per head and per layer x position,
the ablation change, importance scores and pruning curve, the logit-lens rows and per-head direct logits, the
rollout bars and per-layer heatmap, and a tiny LLaVA's rollout laid on its patch grid from the manifest's tokens."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from workbench.app import create_app

import workbench

RNG = np.random.default_rng(7)


def graphs(component) -> dict:
    """{id: go.Figure} of every dcc.Graph under a component tree."""
    found = {}

    def walk(node):
        if isinstance(node, (list, tuple)):
            for child in node:
                walk(child)
            return
        if node is None or isinstance(node, (str, int, float)):
            return
        if type(node).__name__ == "Graph":
            found[node.id] = node.figure
        walk(getattr(node, "children", None))
    walk(component)
    return found


def text_of(component) -> str:
    return json.dumps(component, default=lambda o: o.to_plotly_json() if hasattr(o, "to_plotly_json") else str(o))


def z(figure, index: int = 0) -> np.ndarray:
    return np.array(figure.data[index].z, dtype=np.float64)


def nan_list(array: np.ndarray):
    return np.where(np.isfinite(array), array, np.nan).tolist()


@pytest.fixture(scope="module")
def root(traces_dir, tmp_path_factory):
    """Own copies of a tiny-llama bundle and the tiny-llava bundle (results are added to them here)."""
    folder = tmp_path_factory.mktemp("causal-views")
    shutil.copytree(traces_dir / "llama-stats.wbtrace", folder / "llama.wbtrace")
    shutil.copytree(traces_dir / "llama-stats.wbtrace", folder / "bare.wbtrace")
    shutil.copytree(traces_dir / "vlm" / "llava.wbtrace", folder / "llava.wbtrace")
    shutil.copytree(traces_dir / "images", folder / "images")
    for name in ("routes.json", "circuits.json"):
        (folder / "bare.wbtrace" / "results" / name).unlink(missing_ok=True)
    return folder


@pytest.fixture()
def app(root):
    return create_app(root)


@pytest.fixture(scope="module")
def shape(root):
    trace = workbench.load(root / "llama.wbtrace")
    return trace.n_layers(), trace.n_heads(), len(trace.tokens)


def store(root, name: str, data: dict, bundle: str = "llama") -> None:
    workbench.load(root / f"{bundle}.wbtrace").add_result(name, data)


def patching_json(layers, heads, slots, what="heads", n_tokens=8) -> dict:
    effect = RNG.normal(size=(len(layers), len(heads), len(slots)))
    effect[0, 0, 0] = np.nan  # a pair whose metric did not move: stored as null
    return {"analysis": "patching", "schema_version": 1, "model": "tiny-llama",
            "options": {"metric": "logit-diff", "what": what, "direction": "denoise", "positions": "each"},
            "pairs": [{"clean": "x", "corrupted": "y", "n_tokens": n_tokens}], "layers": list(layers),
            "heads": list(heads), "slot_positions": slots, "clean": 2.0, "corrupted": -1.0,
            "patched": nan_list(effect), "effect": [[[None if not np.isfinite(v) else float(v) for v in row]
                                                      for row in plane] for plane in effect]}


def test_patching_heads_grid_is_the_stored_effect(app, root, shape):
    from workbench.app.pages.causal import causal_view

    n_layers, n_heads, _ = shape
    data = patching_json(range(n_layers), range(n_heads), [None])
    store(root, "patching", data)
    with app.server.app_context():
        figure = graphs(causal_view("llama"))["causal-patching"]
    expected = np.array([[np.nan if v is None else v for v in [plane[h][0] for h in range(n_heads)]]
                         for plane in data["effect"]])
    np.testing.assert_allclose(z(figure), expected, equal_nan=True)
    bound = np.nanmax(np.abs(expected))
    assert figure.data[0].zmin == pytest.approx(-bound) and figure.data[0].zmax == pytest.approx(bound)
    assert figure.layout.yaxis.title.text == "layer" and figure.layout.xaxis.title.text == "head"


def test_patching_a_subset_of_heads_at_each_position_shows_each_heads_largest_effect(app, root, shape):
    from workbench.app.pages.causal import causal_view

    n_layers, n_heads, _ = shape
    data = patching_json([1], [0, 2], [[0], [1], [2]])
    store(root, "patching", data)
    with app.server.app_context():
        figure = graphs(causal_view("llama"))["causal-patching"]
    expected = np.full((n_layers, n_heads), np.nan)
    for hi, head in enumerate([0, 2]):
        values = [v for v in data["effect"][0][hi] if v is not None]
        expected[1, head] = max(values)
    np.testing.assert_allclose(z(figure), expected, equal_nan=True)
    assert "largest over 3 position slots" in figure.layout.title.text


def test_residual_patching_is_a_layer_by_position_heatmap(app, root, shape):
    from workbench.app.pages.causal import causal_view

    n_layers, _, n_tokens = shape
    positions = list(range(n_tokens))
    data = patching_json(range(n_layers + 1), [-1], [[p] for p in positions], what="resid", n_tokens=n_tokens)
    store(root, "patching", data)
    trace = workbench.load(root / "llama.wbtrace")
    with app.server.app_context():
        view = causal_view("llama")
    figure = graphs(view)["causal-patching-positions"]
    expected = np.array([[np.nan if v is None else v for v in plane[0]] for plane in data["effect"]])
    np.testing.assert_allclose(z(figure), expected, equal_nan=True)
    assert list(figure.data[0].x) == positions
    assert figure.layout.yaxis.ticktext[-1] == f"after L{n_layers - 1}"
    assert trace.tokens[3].text.strip() in str(figure.data[0].customdata[0][3])
    assert "not this bundle's tokens" not in text_of(view)


def test_ablation_and_importance(app, root, shape):
    from workbench.app.pages.causal import causal_view

    n_layers, n_heads, _ = shape
    runs = [[[layer, head]] for layer in range(n_layers) for head in range(n_heads)]
    ablated = RNG.normal(size=len(runs)).tolist()
    store(root, "ablation", {"analysis": "ablation", "schema_version": 1, "model": "tiny-llama",
                             "options": {"method": "zero", "metric": "logit-diff"}, "prompts": [{"clean": "x"}],
                             "runs": runs, "clean": 0.5, "corrupted": None, "ablated": ablated})
    scores = RNG.random((n_layers, n_heads))
    curve = [{"removed": c, "loss": 3 + 0.1 * c, "accuracy": 1 - 0.05 * c, "heads": [[0, c - 1]] if c else []}
             for c in range(4)]
    store(root, "importance", {"analysis": "importance", "schema_version": 1, "model": "tiny-llama",
                               "options": {"normalise": "layer", "order": "least"}, "n_prompts": 2, "loss": 3.0,
                               "raw": scores.tolist(), "gradient": scores.tolist(), "scores": scores.tolist(),
                               "ranking": [[0, 0]], "curve": curve})
    with app.server.app_context():
        found = graphs(causal_view("llama"))
    expected = np.array(ablated).reshape(n_layers, n_heads) - 0.5
    np.testing.assert_allclose(z(found["causal-ablation"]), expected, atol=1e-12)
    np.testing.assert_allclose(z(found["causal-importance"]), scores, atol=1e-12)
    assert found["causal-importance"].data[0].zmin == 0.0
    pruning = found["causal-pruning"].data
    assert list(pruning[0].x) == [0, 1, 2, 3] and list(pruning[0].y) == [c["loss"] for c in curve]
    assert list(pruning[1].y) == [c["accuracy"] for c in curve]


def test_a_bundle_without_results_names_the_commands(app):
    from workbench.app.pages.causal import causal_view
    from workbench.app.pages.rollout import rollout_view
    from workbench.app.pages.token_lens import lens_view

    with app.server.app_context():
        text = text_of(causal_view("bare")) + text_of(rollout_view("bare", None)) + text_of(lens_view("bare", 2))
    for command in ("workbench patch", "workbench ablate", "workbench importance", "--store", "workbench rollout",
                    "workbench lens", "--pos 2"):
        assert command in text


def test_token_lens_section_shows_the_stored_rows_and_attribution(app, root, shape):
    from workbench.app.pages.token_lens import lens_view

    n_layers, n_heads, n_tokens = shape
    heads, mlp, bias = RNG.normal(size=(n_layers, n_heads)), RNG.normal(size=n_layers), RNG.normal(size=n_layers)
    rows = [{"layer": layer, "label": f"entering layer {layer}" if layer < n_layers else "after the last layer",
             "top": [["a", 0.5], ["<b>", 0.2]], "target_rank": n_layers + 1 - layer,
             "target_probability": layer / (n_layers + 1), "target_logit": float(layer)}
            for layer in range(n_layers + 1)]
    position = n_tokens - 2
    store(root, "lens", {"analysis": "lens", "schema_version": 1, "model": "tiny-llama", "position": position,
                         "token": "x", "target": {"id": 5, "text": " Paris", "chosen": "given"},
                         "options": {"scale": "final"}, "layers": rows,
                         "attribution": {"heads": heads.tolist(), "mlp": mlp.tolist(), "attn_bias": bias.tolist(),
                                         "embed": 0.25, "offset": 0.5, "logit": 1.0}})
    with app.server.app_context():
        view = lens_view("llama", position)
        elsewhere = text_of(lens_view("llama", 0))
    found = graphs(view)
    np.testing.assert_allclose(z(found["token-lens-dla"]), heads, atol=1e-12)
    bars = found["token-lens-layers"].data
    np.testing.assert_allclose(bars[0].y, heads.sum(1), atol=1e-12)
    np.testing.assert_allclose(bars[1].y, mlp, atol=1e-12)
    curve = found["token-lens-curve"].data
    assert list(curve[0].y) == [r["target_probability"] for r in rows]
    assert list(curve[1].y) == [r["target_rank"] for r in rows]
    text = text_of(view)
    total = heads.sum() + mlp.sum() + bias.sum() + 0.25 + 0.5
    assert f"= {total:.3f}" in text and text.count("entering layer") == n_layers and "after the last layer" in text
    assert f"reads position {position}, not 0" in elsewhere and f"pos={position}" in elsewhere


def test_rollout_bars_layers_and_vlm_patch_grid(app, root, models):
    from workbench.app.pages.rollout import rollout_view

    from workbench.analyses import rollout
    from workbench.capture import Tracer

    trace = workbench.load(root / "llava.wbtrace")
    result = rollout.analyse(trace, position=-1, tracer=Tracer.open(models("tiny-llava")))
    trace.add_result("rollout", result.to_json())
    data = json.loads((root / "llava.wbtrace" / "results" / "rollout.json").read_text())
    with app.server.app_context():
        found = graphs(rollout_view("llava", "rollout"))
    relevance = np.array(data["relevance"])
    np.testing.assert_allclose(found["rollout-bars"].data[0].y, relevance, atol=1e-12)
    np.testing.assert_allclose(z(found["rollout-layers"]), np.array(data["per_layer"]), atol=1e-12)
    manifest = json.loads((root / "llava.wbtrace" / "manifest.json").read_text())
    placed = [(t["patch"], relevance[t["i"]]) for t in manifest["tokens"] if t.get("patch")]
    assert placed
    grid = np.full((1 + max(p[0] for p, _ in placed), 1 + max(p[1] for p, _ in placed)), np.nan)
    for (row, col), value in placed:
        grid[row, col] = value
    image = found["rollout-image"]
    np.testing.assert_allclose(z(image), grid, atol=1e-12, equal_nan=True)
    assert image.layout.images, "the input image lies under the heatmap"


def test_a_result_stored_while_the_app_runs_is_shown_on_the_next_scan(app, root, shape):
    from workbench.app.pages.causal import causal_view

    n_layers, n_heads, _ = shape
    store(root, "patching", patching_json(range(n_layers), range(n_heads), [None]))
    with app.server.app_context():
        first = z(graphs(causal_view("llama"))["causal-patching"])
    replaced = patching_json(range(n_layers), range(n_heads), [None])
    store(root, "patching", replaced)
    app.server.config["WORKBENCH_DATA"].catalog.scan(force=True)  # what the next scan after its interval does
    with app.server.app_context():
        second = z(graphs(causal_view("llama"))["causal-patching"])
    assert not np.allclose(first, second, equal_nan=True)
    assert second[1, 1] == pytest.approx(replaced["effect"][1][1][0])
