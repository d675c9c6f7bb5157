"""Export a view, in real headless Chromium: `workbench export` and the shell's Export control write HTML files that
draw the same figures from file:// with every network request blocked, and PNGs of the page. Figure values are
checked against the bundle's stored maps, not against the app's own output."""

from __future__ import annotations

import io
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tests.app import test_browser as shared_browser
from tests.app.app_helpers import ARTIFACTS, Server

pytestmark = pytest.mark.browser
browser = shared_browser.browser  # the one module-scoped Chromium fixture of the app tests
TIMEOUT = 60_000

# What a reader sees of each figure: trace count and types, heatmap shape, tick labels as drawn in the SVG.
FIGURES = """() => Array.from(document.querySelectorAll('main .js-plotly-plot')).map(function (gd) {
    const heat = gd._fullData.find(function (t) { return t.type === 'heatmap'; });
    const ticks = function (axis) { return Array.from(gd.querySelectorAll('.' + axis + 'tick text'))
        .map(function (t) { return t.textContent; }); };
    return {traces: gd._fullData.length, types: gd._fullData.map(function (t) { return t.type; }),
            heatmap: heat ? [heat.z.length, heat.z[0].length] : null,
            z: heat ? Array.from(heat.z, function (row) { return Array.from(row); }) : null,
            title: (gd._fullLayout.title && gd._fullLayout.title.text) || '',
            xticks: ticks('x'), yticks: ticks('y'), svgs: gd.querySelectorAll('svg.main-svg').length,
            images: (gd._fullLayout.images || []).map(function (i) { return String(i.source).slice(0, 40); }),
            drawn_images: Array.from(gd.querySelectorAll('image')).filter(function (node) {
                const href = node.getAttribute('href') || node.getAttribute('xlink:href') || '';
                return (gd._fullLayout.images || []).some(function (i) { return i.source === href; }); }).length};
})"""


def run_export(*args) -> str:
    """`workbench export ...` as users run it (its own process: playwright's sync API runs one per thread)."""
    result = subprocess.run([sys.executable, "-m", "workbench.cli.main", "export", *map(str, args)], capture_output=True,
                            text=True, timeout=300, check=False, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert result.returncode == 0, result.stderr
    return result.stdout


def figures_in_app(browser, traces_dir, path: str) -> list[dict]:
    from workbench.app import create_app

    server = Server(create_app(traces_dir, allow_trace=False))
    context = browser.new_context(viewport={"width": 1400, "height": 1000})
    try:
        page = context.new_page()
        page.set_default_timeout(TIMEOUT)
        page.goto(server.url + path)
        page.wait_for_function("""() => { const g = Array.from(document.querySelectorAll('main .js-plotly-plot'));
            return g.length > 0 && g.every(function (gd) { return gd._fullLayout && gd.data.length > 0 &&
                !(gd.layout.annotations || []).some(function (a) { return String(a.text).startsWith('loading'); }); })
                && !document.querySelector('[data-dash-is-loading="true"]'); }""")
        page.wait_for_timeout(1000)
        return page.evaluate(FIGURES)
    finally:
        context.close()
        server.close()


def open_offline(browser, html: Path, shot: str) -> list[dict]:
    """Open `html` from file:// with every request that is not the file itself aborted; no request may be tried."""
    context = browser.new_context(viewport={"width": 1400, "height": 1000}, offline=True)
    tried: list[str] = []

    def block(route):
        if route.request.url == html.resolve().as_uri():
            route.continue_()
        else:
            tried.append(route.request.url)
            route.abort()

    context.route("**/*", block)
    errors: list[str] = []
    try:
        page = context.new_page()
        page.set_default_timeout(TIMEOUT)
        page.on("pageerror", lambda error: errors.append(str(error)))
        page.goto(html.resolve().as_uri())
        page.wait_for_function("""() => { const g = Array.from(document.querySelectorAll('.js-plotly-plot'));
            return g.length > 0 && g.every(function (gd) { return gd.querySelector('svg.main-svg'); }); }""")
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(ARTIFACTS / f"{shot}.png"), full_page=True)
        figures = page.evaluate(FIGURES)
    finally:
        context.close()
    assert not tried, f"the exported file asked for {tried}"
    assert not errors, errors
    return figures


def same_figures(exported: list[dict], live: list[dict]) -> None:
    assert len(exported) == len(live) > 0
    for mine, theirs in zip(exported, live, strict=True):
        for key in ("traces", "types", "heatmap", "title", "xticks", "yticks"):
            assert mine[key] == theirs[key], key
        assert mine["svgs"] >= 1


def test_cli_exports_model_and_head_views_that_draw_offline(browser, traces_dir, tmp_path):
    import workbench

    bundle = traces_dir / "llama-maps.wbtrace"
    trace = workbench.load(bundle)
    n = len(trace.tokens)
    # Model view: the sink score of every head, against the stored maps (mean over query rows of column 0).
    out = tmp_path / "model.html"
    printed = run_export(bundle, "--view", "model", "--out", out)
    assert printed.startswith(f"wrote {out} (HTML") and "2 figures" in printed
    exported = open_offline(browser, out, "export-model-offline")
    same_figures(exported, figures_in_app(browser, traces_dir, "/model?bundle=llama-maps"))
    expected = np.stack([trace.layer(layer)["maps"][:, :, 0].float().mean(dim=1).numpy()
                         for layer in range(trace.n_layers())])
    np.testing.assert_allclose(np.array(exported[0]["z"], dtype=float), expected, atol=1e-4)
    # Head view: layer 1, head 2 at full resolution, equal to the stored map; token labels on the axes.
    out = tmp_path / "head.html"
    run_export(bundle, "--view", "head", "--layer", 1, "--head", 2, "--pos", 5, "--out", out)
    exported = open_offline(browser, out, "export-head-offline")
    same_figures(exported, figures_in_app(browser, traces_dir, "/head?bundle=llama-maps&layer=1&head=2&pos=5"))
    heat = exported[0]
    assert heat["heatmap"] == [n, n] and heat["title"].startswith("layer 1, head 2")
    z = np.nan_to_num(np.array(heat["z"], dtype=float))
    np.testing.assert_allclose(z, trace.layer(1)["maps"][2].float().numpy(), atol=1e-6)
    checked = 0
    for label in heat["yticks"] + heat["xticks"]:  # "TEXT POSITION": the token at that position, as text
        text, position = label.rsplit(" ", 1)
        token = trace.tokens[int(position)].text
        if token and token.isascii() and token.isprintable() and token.strip() == token:
            assert text == token, label
            checked += 1
    assert checked >= 10
    assert out.read_bytes().startswith(b"<!DOCTYPE html>") and b"<script src" not in out.read_bytes()


def png_pixels(data: bytes):
    from PIL import Image

    assert data.startswith(b"\x89PNG\r\n\x1a\n")
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))


def plausible_page(pixels, *, min_width: int) -> None:
    height, width, _ = pixels.shape
    assert width >= min_width and height >= 400, pixels.shape
    background = np.array([250, 250, 250])
    drawn = np.abs(pixels.astype(int) - background).sum(axis=2) > 30
    assert drawn.mean() > 0.02, drawn.mean()  # figures and text, not a blank page (panels are white)
    assert len(np.unique(pixels.reshape(-1, 3), axis=0)) > 200  # colour scales, not one flat colour


def test_cli_exports_a_png_of_the_head_view(traces_dir, tmp_path):
    out = tmp_path / "head.png"
    run_export(traces_dir / "llama-maps.wbtrace", "--view", "head", "--layer", 1, "--head", 2, "--out", out,
               "--scale", 2)
    data = out.read_bytes()
    plausible_page(png_pixels(data), min_width=2 * 1300)
    assert b"attention-workbench export" in data[:200]
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    (ARTIFACTS / "export-head.png").write_bytes(data)
    # --force replaces our own export
    run_export(traces_dir / "llama-maps.wbtrace", "--view", "model", "--out", out, "--force", "--scale", 1)
    assert png_pixels(out.read_bytes()).shape[1] < 1500


def test_the_export_control_saves_html_and_png(browser, traces_dir, tmp_path):
    from workbench.app import create_app

    import workbench

    server = Server(create_app(traces_dir, allow_trace=False))
    context = browser.new_context(viewport={"width": 1400, "height": 1000}, accept_downloads=True)
    try:
        page = context.new_page()
        page.set_default_timeout(TIMEOUT)
        page.goto(server.url + "/head?bundle=llama-maps&layer=0&head=4")
        page.wait_for_function("() => { const gd = document.querySelector('#head-map .js-plotly-plot'); "
                               "return gd && gd._fullData && gd._fullData.length > 0 && gd._fullData[0].type === 'heatmap'; }")
        page.wait_for_timeout(1000)
        saved = {}
        for kind in ("html", "png"):
            with page.expect_download() as download:
                page.click(f"#wb-export-{kind}")
            assert download.value.suggested_filename == f"workbench-head-llama-maps.{kind}"
            saved[kind] = tmp_path / download.value.suggested_filename
            download.value.save_as(saved[kind])
            page.wait_for_function(f"() => document.querySelector('#wb-export-status').innerText === "
                                   f"'saved workbench-head-llama-maps.{kind}'")
    finally:
        context.close()
        server.close()
    exported = open_offline(browser, saved["html"], "export-control-offline")
    stored = workbench.load(traces_dir / "llama-maps.wbtrace").layer(0)["maps"][4].float().numpy()
    np.testing.assert_allclose(np.nan_to_num(np.array(exported[0]["z"], dtype=float)), stored, atol=1e-6)
    pixels = png_pixels(saved["png"].read_bytes())
    plausible_page(pixels, min_width=2 * 1300)
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    (ARTIFACTS / "export-control.png").write_bytes(saved["png"].read_bytes())


def test_the_image_view_exports_with_its_picture_inside(browser, traces_dir, tmp_path):
    """The Image view's picture is part of the figure: the exported file must carry it, not point at the server."""
    bundle = traces_dir / "vlm" / "llava.wbtrace"
    out = tmp_path / "image.html"
    run_export(bundle, "--view", "image", "--out", out, "--images", traces_dir / "images")
    exported = open_offline(browser, out, "export-image-offline")
    source = exported[0]["images"][0]
    assert source.startswith("data:image/")
    assert exported[0]["drawn_images"] == 1
