"""Pages without a browser: every layout builds for every bundle (errors become panels), callbacks answer
over HTTP, hostile ids and oversized requests are refused."""

from __future__ import annotations

import json

import pytest
from workbench.app import create_app
from workbench.app.pages import PAGES


@pytest.fixture(scope="module")
def app(traces_dir):
    return create_app(traces_dir)


def _text(component) -> str:
    return json.dumps(component.to_plotly_json(), default=lambda o: o.to_plotly_json() if hasattr(o, "to_plotly_json")
                      else str(o))


@pytest.mark.parametrize("bundle", ["llama-maps", "llama-stats", "vlm/llava"])
def test_every_page_builds_for_every_bundle(app, bundle):
    with app.server.test_request_context():
        for page in PAGES[1:]:  # the Runs page lists the corrupt bundle (with its panel) whatever is selected
            text = _text(page.layout(bundle=bundle, layer="1", head="2", pos="5", stack="text"))
            assert "wb-error" not in text, (page.name, text[:500])


def test_a_corrupt_bundle_gives_a_panel_naming_the_file_and_the_app_keeps_working(app):
    with app.server.test_request_context():
        text = _text(PAGES[1].layout(bundle="broken"))
        assert "wb-error" in text and "broken.wbtrace/manifest.json" in text
        assert "wb-error" not in _text(PAGES[1].layout(bundle="llama-maps"))
        # junk parameters are clamped or ignored, never a crash
        for params in ({"bundle": ["a", "b"], "layer": "x"}, {"bundle": "../../etc", "head": "-5", "pos": "1e99"}):
            for page in PAGES:
                assert "Traceback" not in _text(page.layout(**params))


def test_callbacks_answer_over_http_and_refuse_hostile_ids(app):
    client = app.server.test_client()
    assert client.get("/").status_code == 200
    body = {"output": "..model-grid.figure...model-curves.figure...model-message.children..",
            "outputs": [{"id": "model-grid", "property": "figure"}, {"id": "model-curves", "property": "figure"},
                        {"id": "model-message", "property": "children"}],
            "inputs": [{"id": {"key": "bundle", "type": "wb-sel"}, "property": "value", "value": "llama-maps"},
                       {"id": {"key": "stack", "type": "wb-sel"}, "property": "value", "value": "text"},
                       {"id": "model-metric", "property": "value", "value": "entropy"}],
            "state": [{"id": "model-selected", "property": "data", "value": [1, 2]}],
            "changedPropIds": ["model-metric.value"]}
    response = client.post("/_dash-update-component", json=body)
    assert response.status_code == 200
    figure = response.get_json()["response"]["model-grid"]["figure"]
    assert figure["data"][0]["type"] == "heatmap"
    body["inputs"][0]["value"] = "../../../etc/passwd"
    hostile = client.post("/_dash-update-component", json=body).get_json()["response"]
    assert "no bundle '../../../etc/passwd'" in json.dumps(hostile["model-message"])
    too_big = client.post("/_dash-update-component", data=b"x" * (13 * 1024 * 1024),
                          content_type="application/json")
    assert too_big.status_code == 413


def test_pages_are_pluggable():
    paths = [page.path for page in PAGES]
    assert paths[0] == "/" and len(set(paths)) == len(paths)
    assert {"routes", "circuits", "probe", "vhd", "sinks"} <= {need for page in PAGES for need in page.needs}


def test_circuits_page_names_the_basis_that_produced_the_numbers():
    from workbench.app.pages.circuits import basis_line

    assert basis_line({"basis": "reference", "firing_threshold": 0.5}).startswith("Omega basis: reference")
    assert "A_ij >= 0.5" in basis_line({"basis": "reference", "firing_threshold": 0.5})
    assert basis_line({"basis": "raw"}).startswith("Omega basis: raw (the norm's output")
    assert "predates named bases" in basis_line({})  # results stored before the option existed were raw
