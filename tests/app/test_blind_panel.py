"""The Image page's blind / outlier panel, through the app's test client: each blind (AVC) and outlier (DAMRO) token is
outlined on the patch the trace's token table gives it, and a bundle without the result says how to produce it."""

from __future__ import annotations

import json

import pytest
from workbench.app import create_app

import workbench
from tests.app.app_helpers import png_bytes
from workbench.analyses.blind_tokens import blind_tokens
from workbench.capture import Tracer

BUNDLE = {"key": "bundle", "type": "wb-sel"}


@pytest.fixture(scope="module")
def app_and_result(tmp_path_factory):
    root = tmp_path_factory.mktemp("blind")
    image = root / "picture.png"
    image.write_bytes(png_bytes())
    with_result = workbench.trace("tiny-llava", "Describe the picture", image=str(image), max_new_tokens=2)
    result = blind_tokens(Tracer.open("tiny-llava"), "Describe the picture", str(image), top_k=3)
    with_result.add_result("blind_tokens", result.to_json())
    with_result.save(root / "with.wbtrace")
    workbench.trace("tiny-llava", "Describe the picture", image=str(image), max_new_tokens=2).save(
        root / "without.wbtrace")
    return create_app(root), with_result, result


def _render(app, bundle: str) -> dict:
    body = {"output": "..image-blind.figure...image-blind-notes.children..",
            "outputs": [{"id": "image-blind", "property": "figure"},
                        {"id": "image-blind-notes", "property": "children"}],
            "inputs": [{"id": BUNDLE, "property": "value", "value": bundle}],
            "changedPropIds": [f"{json.dumps(BUNDLE)}.value"]}
    response = app.server.test_client().post("/_dash-update-component", json=body)
    assert response.status_code == 200, response.data[:300]
    return response.get_json()["response"]


def test_blind_and_outlier_tokens_are_outlined_on_their_patches(app_and_result):
    app, trace, result = app_and_result
    out = _render(app, "with")
    figure = out["image-blind"]["figure"]
    patch_of = {t.i: tuple(t.patch) for t in trace.tokens if t.region == "image"}
    centres = {}
    for shape in figure["layout"]["shapes"]:
        centre = (round((shape["y0"] + shape["y1"]) / 2), round((shape["x0"] + shape["x1"]) / 2))
        centres.setdefault(shape["line"]["color"], []).append(centre)
    assert sorted(centres.get("#ff1f1f", [])) == sorted(patch_of[p] for p in result.blind)
    assert sorted(centres["#00d5ff"]) == sorted(patch_of[p] for p in result.outliers)
    names = [d.get("name", "") for d in figure["data"]]
    assert any(n.startswith("AVC blind tokens") for n in names) and any(n.startswith("DAMRO") for n in names)
    assert "blind tokens" in json.dumps(out["image-blind-notes"]["children"])


def test_a_bundle_without_the_result_names_the_command(app_and_result):
    out = _render(app_and_result[0], "without")
    assert "workbench blind" in json.dumps(out["image-blind-notes"]["children"])
