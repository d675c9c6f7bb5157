"""The Image page's blind / outlier panel in real Chromium on a llava-scenes bundle traced with `workbench trace
--intervene avc` (which stores results/blind_tokens.json): the outlines plotly drew, read back from the page, sit on
the patches of the blind (AVC) and outlier (DAMRO) tokens that `blind_tokens` finds here for the same input, and the
legend counts them. The screenshot of the panel, out/test-artifacts/app/blind-tokens-llava-scenes.png, is
docs/images/app-blind-tokens.png's source."""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import pytest

from tests.app.app_helpers import ARTIFACTS, Server
from tests.app.test_browser import browser, page, wait_figure  # noqa: F401 - fixtures and helpers shared
from tests.workbench.cli.cli_inprocess import run_cli

pytestmark = [pytest.mark.browser, pytest.mark.slow]
IMAGE = "data/scenes/images/scene_0003.png"
PROMPT = "Is there a red circle?"
BLIND, OUTLIER = "#ff1f1f", "#00d5ff"

# The outlines of the panel, read in the page: each shape's colour and the patch (row, col) at its centre.
DRAWN = """() => { const gd = document.querySelector('#image-blind .js-plotly-plot');
    return {shapes: (gd.layout.shapes || []).map(s => [s.line.color, Math.round((s.y0 + s.y1) / 2),
                                                      Math.round((s.x0 + s.x1) / 2)]),
            legend: Array.from(gd.querySelectorAll('.legendtext')).map(t => t.textContent)}; }"""


@pytest.fixture(scope="module")
def blind_server(tmp_path_factory):
    from workbench.app import create_app

    root = tmp_path_factory.mktemp("blind") / "traces"
    (root / "images").mkdir(parents=True)
    data = Path(IMAGE).read_bytes()
    (root / "images" / f"{hashlib.sha256(data).hexdigest()}.png").write_bytes(data)
    code, _, err = run_cli("trace", "-m", "llava-scenes", "-p", PROMPT, "--image", IMAGE, "-n", "3",
                           "--intervene", "avc", "-o", str(root / "scene.wbtrace"))
    assert code == 0, err
    running = Server(create_app(root))
    yield running, root / "scene.wbtrace"
    running.close()
    shutil.rmtree(root, ignore_errors=True)


def test_the_panel_outlines_the_blind_and_outlier_patches(blind_server, page):  # noqa: F811
    import workbench
    from workbench.analyses.blind_tokens import blind_tokens
    from workbench.capture import Tracer

    server, bundle = blind_server
    found = blind_tokens(Tracer.open("llava-scenes"), PROMPT, IMAGE)  # the analysis itself, not the stored JSON
    patch_of = {t.i: tuple(t.patch) for t in workbench.load(bundle).tokens if t.region == "image"}
    assert found.blind and found.outliers  # something to outline

    page.goto(server.url + "/image?bundle=scene")
    wait_figure(page, "image-blind", "(gd.layout.shapes || []).length > 0")
    drawn = page.evaluate(DRAWN)
    by_colour: dict[str, list] = {}
    for colour, row, col in drawn["shapes"]:
        by_colour.setdefault(colour, []).append((row, col))
    assert sorted(by_colour[BLIND]) == sorted(patch_of[p] for p in found.blind)
    assert sorted(by_colour[OUTLIER]) == sorted(patch_of[p] for p in found.outliers)
    assert f"AVC blind tokens ({len(found.blind)})" in drawn["legend"]
    assert f"DAMRO outliers ([CLS] top-k) ({len(found.outliers)})" in drawn["legend"]
    assert f"{len(found.blind)} blind tokens" in page.inner_text("#image-blind-notes")

    page.mouse.move(5, 5)
    # the panel alone: from its heading to the bottom of its graph, in page coordinates
    box = page.evaluate("""() => { const h = Array.from(document.querySelectorAll('h3'))
            .find(e => e.textContent.startsWith('Blind and outlier'));
        const g = document.querySelector('#image-blind').getBoundingClientRect();
        const top = h.getBoundingClientRect().top + window.scrollY;
        return {x: 0, y: top - 8, width: 1400, height: g.bottom + window.scrollY - top + 16}; }""")
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "blind-tokens-llava-scenes.png"), full_page=True, clip=box)
