"""High-norm artifact tokens on the Image page in real Chromium on a real DINOv2 ViT-S/14 bundle (`workbench trace
--model dinov2-s --hidden` on data/scenes scene 0001, then `workbench sinks --artifact-factor 1.4`: ViT-S has no
artifact at the paper's scale, see docs/analyses/sinks.md, so a lower factor flags a few patches in middle layers).
In the layer with the most flagged patches, the green dotted outlines plotly drew sit exactly on the patches that
results/sinks.json lists for that layer, read here with `json` and placed by the bundle's own token (row, col)
labels; at the output (all layers) there is none and the note says how far the top patch is. The screenshot,
out/test-artifacts/app/vision-artifacts-dinov2.png, is docs/images/app-vision-artifacts.png's source."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pytest

import workbench
from tests.app.app_helpers import ARTIFACTS, Server
from tests.app.test_browser import browser, page, wait_figure  # noqa: F401 - fixtures and helpers shared
from tests.workbench.cli.cli_inprocess import run_cli

pytestmark = [pytest.mark.browser, pytest.mark.slow]
IMAGE = "data/scenes/images/scene_0001.png"
GREEN = "#39ff14"

# The overlay's shapes, read in the page: colour, dash and the patch (row, col) at each centre; legend texts.
DRAWN = """() => { const gd = document.querySelector('#image-overlay .js-plotly-plot');
    return {shapes: (gd.layout.shapes || []).map(s => [s.line.color, s.line.dash || 'solid',
                                                      Math.round((s.y0 + s.y1) / 2), Math.round((s.x0 + s.x1) / 2)]),
            legend: Array.from(gd.querySelectorAll('.legendtext')).map(t => t.textContent),
            title: gd.layout.title.text}; }"""


@pytest.fixture(scope="module")
def dino_server(tmp_path_factory):
    from workbench.app import create_app

    root = tmp_path_factory.mktemp("dino") / "traces"
    (root / "images").mkdir(parents=True)
    data = Path(IMAGE).read_bytes()
    (root / "images" / f"{hashlib.sha256(data).hexdigest()}.png").write_bytes(data)
    code, _, err = run_cli("trace", "--model", "dinov2-s", "--image", IMAGE, "--hidden", "-o", str(root / "scene.wbtrace"))
    assert code == 0, err
    code, _, err = run_cli("sinks", str(root / "scene.wbtrace"), "--artifact-factor", "1.4")
    assert code == 0, err
    running = Server(create_app(root))
    yield running, root / "scene.wbtrace"
    running.close()
    shutil.rmtree(root, ignore_errors=True)


def green(drawn) -> list[tuple[int, int]]:
    return sorted((row, col) for colour, _, row, col in drawn["shapes"] if colour == GREEN)


def test_the_image_page_outlines_the_stored_artifact_patches(dino_server, page):  # noqa: F811
    server, bundle = dino_server
    artifacts = json.loads((bundle / "results" / "sinks.json").read_text())["artifacts"]
    assert artifacts["available"]
    busiest = max(artifacts["layers"], key=lambda entry: len(entry["artifacts"]))
    assert busiest["artifacts"] and not artifacts["layers"][-1]["artifacts"]  # some in a middle layer, none at the output
    patch_of = {t.i: tuple(t.patch) for t in workbench.load(bundle).tokens if t.region == "image"}
    assert len(patch_of) == 256 and len(set(patch_of.values())) == 256  # 16 x 16 patches, one token each
    expected = sorted(patch_of[a["position"]] for a in busiest["artifacts"])
    assert expected == sorted(tuple(a["patch"]) for a in busiest["artifacts"])

    # at the output (the page's default, all layers): nothing outlined in green, the note gives the top patch
    page.goto(server.url + "/image?bundle=scene")
    wait_figure(page, "image-overlay", "(gd.layout.title.text || '').includes('all layers')")
    drawn = page.evaluate(DRAWN)
    assert green(drawn) == [] and "high-norm artifact tokens (0)" in drawn["legend"]
    top = artifacts["layers"][-1]["top"]
    assert f"highest-norm patch {tuple(top['patch'])} is {top['ratio']:.2f} x the median" in page.inner_text("#image-notes")

    page.goto(server.url + f"/image?bundle=scene&layer={busiest['layer']}")
    wait_figure(page, "image-overlay", f"(gd.layout.title.text || '').includes('layer {busiest['layer']}')")
    drawn = page.evaluate(DRAWN)
    assert green(drawn) == expected
    assert all(dash == "dot" for colour, dash, _, _ in drawn["shapes"] if colour == GREEN)
    assert f"high-norm artifact tokens ({len(expected)})" in drawn["legend"]
    assert f"green dotted: {len(expected)} high-norm artifact tokens (norm > 1.4 x the median patch norm" in \
        page.inner_text("#image-notes")

    page.mouse.move(5, 5)
    box = page.evaluate("""() => { const n = document.querySelector('#image-notes').getBoundingClientRect();
        const g = document.querySelector('#image-overlay').getBoundingClientRect();
        return {x: 0, y: n.top + window.scrollY - 8, width: 1400, height: g.bottom - n.top + 16}; }""")
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "vision-artifacts-dinov2.png"), full_page=True, clip=box)
