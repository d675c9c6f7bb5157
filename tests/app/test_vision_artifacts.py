"""The Image page marks a vision encoder's high-norm artifact patches (results/sinks.json) on the patch grid."""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image
from workbench.app.figures.image import ARTIFACT_COLOUR, mark_artifacts, patch_overlay
from workbench.app.pages.image import artifact_cells, patch_layout

import workbench
from workbench.analyses import sinks

PLANTED_PATCH = (2, 1)


def _planted_trace(tmp_path):
    """tiny-dinov2 with one patch's position embedding blown up (an artifact in every layer), saved with its sinks."""
    loaded = workbench.load_model("tiny-dinov2")
    side = loaded.model.config.image_size // loaded.model.config.patch_size
    position = 1 + PLANTED_PATCH[0] * side + PLANTED_PATCH[1]
    with torch.no_grad():
        loaded.model.embeddings.position_embeddings[0, position] += 500.0
    trace = workbench.trace(loaded, None, image=Image.new("RGB", (40, 40), (90, 60, 30)), hidden_states=True)
    trace.add_result("sinks", sinks.analyse(trace).to_json())
    trace.save(tmp_path / "planted.wbtrace")
    return workbench.load(tmp_path / "planted.wbtrace")


def test_artifact_cells_come_from_the_stored_result_and_are_outlined(tmp_path):
    trace = _planted_trace(tmp_path)
    grid_positions, _ = patch_layout(trace, "text")
    cells, text = artifact_cells(trace, None, grid_positions)
    assert cells == [PLANTED_PATCH] and "1 high-norm artifact tokens" in text
    assert artifact_cells(trace, 0, grid_positions)[0] == [PLANTED_PATCH]  # present from the first layer on
    fig = mark_artifacts(patch_overlay(np.zeros(grid_positions.shape)), cells)
    outlined = [shape for shape in fig.layout.shapes if shape.line.color == ARTIFACT_COLOUR]
    assert [(round((s.y0 + s.y1) / 2), round((s.x0 + s.x1) / 2)) for s in outlined] == [PLANTED_PATCH]


def test_bundle_without_hidden_states_says_why(tmp_path):
    trace = workbench.trace("tiny-dinov2", None, image=Image.new("RGB", (40, 40)))
    trace.add_result("sinks", sinks.analyse(trace).to_json())
    trace.save(tmp_path / "bare.wbtrace")
    trace = workbench.load(tmp_path / "bare.wbtrace")
    cells, text = artifact_cells(trace, None, patch_layout(trace, "text")[0])
    assert cells == [] and "--hidden" in text


def test_image_page_outlines_the_artifact_over_http(tmp_path):
    from workbench.app import create_app

    _planted_trace(tmp_path)
    client = create_app(tmp_path).server.test_client()
    selector = lambda key, value: {"id": {"key": key, "type": "wb-sel"}, "property": "value", "value": value}
    body = {"output": "..image-overlay.figure...image-notes.children..",
            "outputs": [{"id": "image-overlay", "property": "figure"}, {"id": "image-notes", "property": "children"}],
            "inputs": [selector("bundle", "planted"), selector("stack", "text"),
                       {"id": "image-mode", "property": "value", "value": "received"},
                       {"id": "image-layer", "property": "value", "value": "mean"},
                       {"id": "image-head", "property": "value", "value": "mean"}, selector("pos", 0),
                       {"id": "image-tile", "property": "value", "value": None}],
            "changedPropIds": ["image-mode.value"]}
    response = client.post("/_dash-update-component", json=body).get_json()["response"]
    shapes = response["image-overlay"]["figure"]["layout"]["shapes"]
    outlined = [s for s in shapes if s["line"]["color"] == ARTIFACT_COLOUR]
    assert [(round((s["y0"] + s["y1"]) / 2), round((s["x0"] + s["x1"]) / 2)) for s in outlined] == [PLANTED_PATCH]
    assert "high-norm artifact tokens" in str(response["image-notes"])
