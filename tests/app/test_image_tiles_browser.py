"""The Image page's tile menu in real Chromium on a tiny-llava-next bundle (base image tile 0, anyres crops 1..4):
it opens on the whole-image tile drawn over the picture; picking a crop in the menu redraws that tile alone, without
the picture. Each drawn cell's token position is checked against the bundle's token (row, col, tile) labels."""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import numpy as np
import pytest

import workbench
from tests.app.app_helpers import Server
from tests.app.test_browser import browser, page, shot, wait_figure  # noqa: F401 - fixtures and helpers shared
from tests.app.test_causal_browser import decoded

pytestmark = pytest.mark.browser
IMAGE = "data/scenes/images/scene_0001.png"
DRAWN = """() => { const gd = document.querySelector('#image-overlay .js-plotly-plot');
    return {cells: gd.data[0].customdata, title: gd.layout.title.text,
            pictures: (gd.layout.images || []).length}; }"""


@pytest.fixture(scope="module")
def tiled_server(tmp_path_factory):
    from workbench.app import create_app

    root = tmp_path_factory.mktemp("tiled") / "traces"
    (root / "images").mkdir(parents=True)
    data = Path(IMAGE).read_bytes()
    (root / "images" / f"{hashlib.sha256(data).hexdigest()}.png").write_bytes(data)
    workbench.trace("tiny-llava-next", "Describe", image=IMAGE, max_new_tokens=1).save(root / "next.wbtrace")
    running = Server(create_app(root))
    yield running, root / "next.wbtrace"
    running.close()
    shutil.rmtree(root, ignore_errors=True)


def check_cells(drawn, tokens, tile: int) -> None:
    cells = decoded(drawn["cells"])  # the heatmap's token position per cell, as the page holds it
    assert cells.shape == (4, 4)
    for (row, col), position in np.ndenumerate(cells):
        token = tokens[int(position)]
        assert (token.region, token.patch, token.tile) == ("image", (row, col), tile)


def test_the_tile_menu_draws_one_tile_at_a_time(tiled_server, page):  # noqa: F811
    server, bundle = tiled_server
    tokens = workbench.load(bundle).tokens
    page.goto(server.url + "/image?bundle=next")
    wait_figure(page, "image-overlay", "(gd.layout.title.text || '').includes('tile 0 (whole image)')")
    drawn = page.evaluate(DRAWN)
    check_cells(drawn, tokens, 0)
    assert drawn["pictures"] == 1

    page.click("#image-tile")
    page.get_by_text("tile 2 (crop)", exact=True).click()
    wait_figure(page, "image-overlay", "(gd.layout.title.text || '').includes('tile 2,')")
    drawn = page.evaluate(DRAWN)
    check_cells(drawn, tokens, 2)
    assert drawn["pictures"] == 0 and "tile 2 is a crop of the image" in page.inner_text("#image-notes")
    shot(page, "image-tiles-llava-next")
