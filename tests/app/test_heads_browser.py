"""Every head at once and token labels at any length, in real Chromium: on a ~100-token SmolLM2 bundle the
Heads page draws one thumbnail per head (per layer, and 30 x 9 zoomed out), a click opens that head, and the
Head map's axes carry readable, non-overlapping `text position` labels; on stored-map bundles of 30 and
2,048 tokens the labels are drawn too. Screenshots land in out/test-artifacts/app/."""

from __future__ import annotations

import itertools
import math
import shutil

import pytest

import workbench
from tests.app.app_helpers import ARTIFACTS, Server
from tests.app.test_browser import browser, page, wait_figure  # noqa: F401 - fixtures and helpers shared

pytestmark = pytest.mark.browser

# About 100 SmolLM2 tokens of plain text (raw: no chat template), with repeated words ("the", "lamp").
PROMPT = ("The old lighthouse keeper climbed the stairs every evening to light the lamp. The lamp was heavy, the "
          "glass was cold, and the wind pushed against the windows. He wrote the time in a small book, then he "
          "watched the ships pass the rocks. One night the lamp went dark, and the keeper ran down to the cellar "
          "to find oil. When the light came back, a small boat was already close to the rocks, and its captain "
          "waved his hat at the tower")


def thumb(layer: int, head: int) -> str:
    return f"[id='{{\"head\":{head},\"layer\":{layer},\"type\":\"heads-thumb\"}}']"


def shot(tab, name: str) -> None:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    tab.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True)


def drawn_ticks(tab, axis: str) -> list[dict]:
    """The tick labels plotly drew on the Head map's x or y axis, with their boxes on screen."""
    return tab.evaluate("""(axis) => Array.from(document.querySelectorAll(`#head-map .${axis}tick text`))
        .map(t => { const r = t.getBoundingClientRect();
                    return {text: t.textContent, top: r.top, bottom: r.bottom, left: r.left, right: r.right}; })""",
                         axis)


def assert_labels_readable(tab, texts: list[str]) -> None:
    """Both axes: between 20 (or every position when fewer) and 40 labels, each naming the token at its own
    position, positions unique (duplicate texts not merged), and the query labels do not overlap."""
    from workbench.app.figures.common import token_text

    n = len(texts)
    for axis in ("x", "y"):
        ticks = drawn_ticks(tab, axis)
        assert min(20, n) <= len(ticks) <= 40, (axis, len(ticks))
        positions = []
        for tick in ticks:
            label, _, number = tick["text"].rpartition(" ")
            positions.append(int(number))
            assert label == token_text(texts[int(number)], 10), tick
        assert len(set(positions)) == len(positions)
    rows = sorted(drawn_ticks(tab, "y"), key=lambda t: t["top"])
    assert all(b["top"] >= a["bottom"] - 1 for a, b in itertools.pairwise(rows)), "query labels overlap"


@pytest.fixture(scope="module")
def smollm2_server(models, tmp_path_factory):
    """A ~100-token SmolLM2 bundle, statistics only (the app recomputes maps with the model)."""
    from workbench.app import create_app

    root = tmp_path_factory.mktemp("heads") / "traces"
    root.mkdir(parents=True)
    workbench.trace(models("smollm2"), PROMPT, max_new_tokens=4, raw=True).save(root / "story.wbtrace")
    trace = workbench.load(root / "story.wbtrace")
    assert 90 <= len(trace.tokens) <= 130
    running = Server(create_app(root))
    yield running, trace
    running.close()
    shutil.rmtree(root, ignore_errors=True)


@pytest.mark.slow
def test_every_head_of_a_layer_then_a_click_opens_that_head_with_labels(smollm2_server, page):  # noqa: F811
    server, trace = smollm2_server
    n = len(trace.tokens)
    page.goto(server.url + "/heads?bundle=story&layer=3")
    page.wait_for_function("""() => { const images = document.querySelectorAll('#heads-layer-grid img.wb-head-thumb');
        return images.length > 0 && Array.from(images).every(i => i.complete && i.naturalWidth > 0); }""",
                           timeout=120_000)
    assert page.locator("#heads-layer-grid img.wb-head-thumb").count() == trace.n_heads() == 9
    side = math.ceil(n / math.ceil(n / 64))  # blocks of ceil(n / 64) positions per pixel
    sizes = page.evaluate("() => Array.from(document.querySelectorAll('#heads-layer-grid img')).map(i => [i.naturalWidth,"
                          " i.naturalHeight])")
    assert sizes == [[side, side]] * 9
    assert [f"L3H{h}" for h in range(9)] == [t for t in page.inner_text("#heads-layer-grid").split() if t.startswith("L")]
    assert "recomputed" in page.inner_text("#heads-note")
    shot(page, "heads-layer")
    page.click(thumb(3, 4))
    page.wait_for_url("**/head?**layer=3**head=4**")
    wait_figure(page, "head-map", "gd.layout.title.text.startsWith('layer 3, head 4')")
    texts = [t.text for t in trace.tokens]
    assert_labels_readable(page, texts)
    # hover a cell: the tooltip names both tokens in full
    query, key = n // 2, 7
    pixel = page.evaluate("""([x, y]) => { const gd = document.querySelector('#head-map .js-plotly-plot');
        const r = gd.querySelector('.nsewdrag').getBoundingClientRect(); const fl = gd._fullLayout;
        return [r.left + fl.xaxis.d2p(x), r.top + fl.yaxis.d2p(y)]; }""", [key, query])
    page.mouse.move(pixel[0] - 3, pixel[1] - 3)
    page.mouse.move(*pixel, steps=3)  # plotly shows hover on mouse movement over the plot
    page.wait_for_function(f"""() => Array.from(document.querySelectorAll('#head-map .hoverlayer .hovertext'))
        .some(h => h.textContent.includes('query {query}'))""")
    hover = page.evaluate("() => document.querySelector('#head-map .hoverlayer').textContent")
    from workbench.app.figures.common import token_text

    assert token_text(texts[query], 60) in hover and token_text(texts[key], 60) in hover
    page.mouse.move(5, 5)
    shot(page, "head-labels-100")


@pytest.mark.slow
def test_all_layers_zoomed_out_and_a_click_opens_the_head(smollm2_server, page):  # noqa: F811
    server, trace = smollm2_server
    page.goto(server.url + "/heads?bundle=story&scope=all")
    page.wait_for_function("() => document.querySelectorAll('#heads-model-grid img.wb-head-thumb').length > 0",
                           timeout=120_000)
    assert page.locator("#heads-model-grid img.wb-head-thumb").count() == trace.n_layers() * trace.n_heads() == 270
    rows = page.inner_text("#heads-model-grid")
    assert "layer 0" in rows and "layer 29" in rows and "H8" in rows
    page.wait_for_function("() => Array.from(document.querySelectorAll('#heads-model-grid img')).every(i => i.complete)")
    shot(page, "heads-all")
    page.click(thumb(12, 5))
    page.wait_for_url("**/head?**layer=12**head=5**")
    wait_figure(page, "head-map", "gd.layout.title.text.startsWith('layer 12, head 5')")


@pytest.fixture(scope="module")
def stored_server(tmp_path_factory):
    """Synthetic bundles with stored maps (no model) at 30 and 2,048 tokens."""
    from workbench.app import create_app
    from workbench.app.data.synthetic import synthetic_trace

    root = tmp_path_factory.mktemp("labels") / "traces"
    root.mkdir(parents=True)
    for n in (30, 2048):
        synthetic_trace(layers=2, heads=2, tokens=n, n_generated=4, map_layers=(1,), seed=n).save(root / f"n{n}.wbtrace")
    running = Server(create_app(root))
    yield running, root
    running.close()


@pytest.mark.parametrize("n", [30, 2048])
def test_head_map_labels_at_30_and_2048_tokens(stored_server, page, n):  # noqa: F811
    server, root = stored_server
    texts = [t.text for t in workbench.load(root / f"n{n}.wbtrace").tokens]
    page.goto(server.url + f"/head?bundle=n{n}&layer=1&head=1")
    wait_figure(page, "head-map", "gd.layout.title.text.startsWith('layer 1, head 1')")
    assert_labels_readable(page, texts)
    shot(page, f"head-labels-{n}")
