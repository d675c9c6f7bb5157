"""The Model page's basin panel, through the app's test client: bars at the list positions with the stored profile (the
bundle's span masses averaged by hand here), item texts as tick labels, nothing for a bundle without the result."""

from __future__ import annotations

import json

import numpy as np
import pytest
from workbench.app import create_app

import workbench
from workbench.analyses import basin
from workbench.capture.spans import marker_spans

BUNDLE = {"key": "bundle", "type": "wb-sel"}
LIST = "Items: <d>one two</d> <d>three</d> <d>four five six</d> <d>seven</d> Which?"


@pytest.fixture(scope="module")
def app_and_trace(tmp_path_factory):
    root = tmp_path_factory.mktemp("basin")
    trace = workbench.trace("tiny-llama", LIST, max_new_tokens=2, spans=marker_spans(LIST, "<d>,</d>"))
    trace.add_result("basin", basin.analyse(trace).to_json())
    trace.save(root / "with.wbtrace")
    workbench.trace("tiny-llama", LIST, max_new_tokens=2).save(root / "without.wbtrace")
    return create_app(root), trace


def _render(app, bundle: str):
    body = {"output": "model-basin.children", "outputs": {"id": "model-basin", "property": "children"},
            "inputs": [{"id": BUNDLE, "property": "value", "value": bundle}],
            "changedPropIds": [f"{json.dumps(BUNDLE)}.value"]}
    response = app.server.test_client().post("/_dash-update-component", json=body)
    assert response.status_code == 200, response.data[:300]
    return response.get_json()["response"]["model-basin"]["children"]


def test_basin_panel_draws_the_stored_profile(app_and_trace):
    app, trace = app_and_trace
    children = _render(app, "with")
    figure = next(child["props"]["figure"] for child in children if child.get("props", {}).get("id") == "model-basin-profile")
    bars = figure["data"][0]
    spans = trace.meta["inputs"]["spans"]
    first = spans[-1]["tokens"][1]
    expected = [np.mean([trace.layer(layer)["span_mass"][:, first:, k].double().mean().item()
                         for layer in range(trace.n_layers())]) for k in range(len(spans))]
    assert np.allclose(bars["y"], expected, atol=1e-6)
    assert bars["x"] == [0, 1, 2, 3]
    # ticks: each item's own text (the tokens between the markers), not its span name
    assert figure["layout"]["xaxis"]["ticktext"] == ["one two", "three", "four five six", "seven"]
    assert "U-score" in figure["layout"]["title"]["text"]


def test_no_panel_without_the_result(app_and_trace):
    app, _ = app_and_trace
    assert _render(app, "without") == []


def test_per_head_u_scores_reach_the_model_view_metrics(app_and_trace):
    from workbench.app.data import results as results_mod

    _, trace = app_and_trace
    metrics, warnings = results_mod.head_metrics(trace.results, "text", trace.n_layers(), trace.n_heads())
    assert not warnings and "result:basin:basin_u_score" in metrics
    stored = basin.BasinResult.from_json(trace.results["basin"])
    assert np.allclose(metrics["result:basin:basin_u_score"].values, stored.head_u_scores, equal_nan=True)
