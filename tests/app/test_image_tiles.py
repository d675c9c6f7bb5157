"""The Image page on a tiled family (tiny-llava-next: base image tile 0, anyres crops 1..4), through the app's test
client: one tile drawn at a time (tiles share (row, col) ranges; drawn together they overwrote each other and the
page failed), the whole-image tile by default and under the picture, a crop without it. The cells' token positions
are checked against the documented sequence layout (tile 0 first, row-major; then the mosaic rows, each closed by
an image-newline token) and against the tokens' (row, col, tile) labels."""

from __future__ import annotations

import base64
import hashlib
import json
from pathlib import Path

import numpy as np
import pytest

import workbench
from tests.app.test_hints import _call

IMAGE = "data/scenes/images/scene_0001.png"
BUNDLE = {"key": "bundle", "type": "wb-sel"}
OUTPUTS = [("image-overlay", "figure"), ("image-notes", "children")]


@pytest.fixture(scope="module")
def app_and_trace(tmp_path_factory):
    from workbench.app import create_app

    root = tmp_path_factory.mktemp("tiles")
    (root / "images").mkdir()
    data = Path(IMAGE).read_bytes()
    (root / "images" / f"{hashlib.sha256(data).hexdigest()}.png").write_bytes(data)
    trace = workbench.trace("tiny-llava-next", "Describe", image=IMAGE, max_new_tokens=1)
    trace.save(root / "next.wbtrace")
    return create_app(root), trace


def cells(figure) -> np.ndarray:
    """The heatmap's token positions per cell (plotly sends numpy arrays as base64 typed arrays)."""
    custom = figure["data"][0]["customdata"]
    if isinstance(custom, dict):
        shape = [int(v) for v in str(custom["shape"]).split(",")]
        return np.frombuffer(base64.b64decode(custom["bdata"]), dtype=custom["dtype"]).reshape(shape)
    return np.array(custom)


def render(app, tile):
    return _call(app, OUTPUTS, [(BUNDLE, "value", "next"), ({"key": "stack", "type": "wb-sel"}, "value", "text"),
                                ("image-mode", "value", "received"), ("image-layer", "value", "mean"),
                                ("image-head", "value", "mean"), ({"key": "pos", "type": "wb-sel"}, "value", None),
                                ("image-tile", "value", tile)])


def test_the_base_image_tile_is_drawn_under_the_picture_by_default(app_and_trace):
    app, trace = app_and_trace
    out = render(app, None)
    figure = out["image-overlay"]["figure"]
    drawn = cells(figure)
    image = [t for t in trace.tokens if t.region == "image"]
    assert drawn.tolist() == np.array([t.i for t in image[:16]]).reshape(4, 4).tolist()  # tile 0: the first 16
    assert all(image[int(k) - image[0].i].tile == 0 for k in drawn.ravel())
    assert figure["layout"].get("images") and "tile 0 (whole image)" in figure["layout"]["title"]["text"]


@pytest.mark.parametrize("tile", [1, 2, 3, 4])
def test_a_crop_tile_is_its_own_grid_without_the_picture(app_and_trace, tile):
    app, trace = app_and_trace
    out = render(app, tile)
    figure = out["image-overlay"]["figure"]
    drawn = cells(figure)
    for (row, col), position in np.ndenumerate(drawn):
        token = trace.tokens[int(position)]
        assert (token.region, token.patch, token.tile) == ("image", (row, col), tile)
    assert drawn.shape == (4, 4) and len(set(drawn.ravel().tolist())) == 16
    assert not figure["layout"].get("images")
    assert f"tile {tile} is a crop of the image" in json.dumps(out["image-notes"]["children"])


def test_the_page_offers_every_tile(app_and_trace):
    app, _ = app_and_trace
    from workbench.app.pages.image import layout

    with app.server.test_request_context("/image?bundle=next"):
        text = json.dumps(layout(bundle="next").to_plotly_json(), default=str)
    assert "tile 0 (whole image)" in text and all(f"tile {k} (crop)" in text for k in range(1, 5))
