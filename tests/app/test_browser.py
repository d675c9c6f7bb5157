"""The app in real headless Chromium (Debian's, driven by playwright): every page on real bundles, a heatmap
click through to the head view, a token selection, the trace form, separate users, and a screenshot of
each page in out/test-artifacts/app/."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from tests.app.app_helpers import ARTIFACTS, Server

pytestmark = pytest.mark.browser
CHROMIUM = "/usr/bin/chromium"
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-background-networking"]
TIMEOUT = 30_000


@pytest.fixture(scope="module")
def server(traces_dir, tmp_path_factory):
    from workbench.app import create_app

    root = tmp_path_factory.mktemp("browser") / "traces"
    shutil.copytree(traces_dir, root)
    running = Server(create_app(root))
    yield running
    running.close()


@pytest.fixture(scope="module")
def browser():
    if not Path(CHROMIUM).exists():
        pytest.skip("Debian chromium is missing; run `make browser`")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        yield launched
        launched.close()


@pytest.fixture()
def page(browser):
    context = browser.new_context(viewport={"width": 1400, "height": 1000})
    page = context.new_page()
    page.set_default_timeout(TIMEOUT)
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    yield page
    context.close()
    assert not errors, errors


def shot(page, name: str) -> None:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True)


def sel(key: str) -> str:
    return f"[id='{{\"key\":\"{key}\",\"type\":\"wb-sel\"}}']"


def wait_figure(page, graph_id: str, predicate: str = "true") -> None:
    """Until the graph has drawn data and `predicate` (JS over gd) holds."""
    page.wait_for_function(f"""() => {{ const gd = document.querySelector('#{graph_id} .js-plotly-plot');
        return gd && gd.data && gd.data.length > 0 && gd._fullLayout && ({predicate}); }}""")


def title(page, graph_id: str) -> str:
    return page.evaluate(f"() => document.querySelector('#{graph_id} .js-plotly-plot').layout.title.text || ''")


def click_cell(page, graph_id: str, x: float, y: float) -> None:
    """Click the data point (x, y) of a plotly graph."""
    point = page.evaluate("""([id, x, y]) => { const gd = document.querySelector(`#${id} .js-plotly-plot`);
        const r = gd.querySelector('.nsewdrag').getBoundingClientRect(); const fl = gd._fullLayout;
        return [r.left + fl.xaxis.d2p(x), r.top + fl.yaxis.d2p(y)]; }""", [graph_id, x, y])
    page.mouse.click(*point)


def test_runs_lists_bundles_thumbnails_and_the_corrupt_one(server, page):
    page.goto(server.url + "/")
    table = page.locator("#runs-bundles")
    table.wait_for()
    text = table.inner_text()
    assert "llama-maps" in text and "vlm/llava" in text and "tiny-llava (vlm)" in text
    assert "broken.wbtrace/manifest.json" in text
    assert page.locator("img.wb-thumb").first.get_attribute("src").startswith("data:image/png;base64,")
    shot(page, "runs")


def test_model_cell_click_opens_the_head_then_a_token(server, page):
    page.goto(server.url + "/model?bundle=llama-stats")
    wait_figure(page, "model-grid", "gd._fullData[0].z.length === 3")
    assert "sink score" in title(page, "model-grid")
    assert "Lookback" not in page.inner_text("#model-message")
    shot(page, "model")
    click_cell(page, "model-grid", 3, 2)  # head 3 of layer 2
    page.wait_for_url("**/head?**layer=2**head=3**")
    wait_figure(page, "head-map", "gd.layout.title.text.startsWith('layer 2, head 3')")
    assert "recomputed on the server" in page.inner_text("#head-source")
    wait_figure(page, "head-lines")
    click_cell(page, "head-map", 3, 10)  # query 10 -> key 3
    page.wait_for_function("() => (document.querySelector('#head-clicked')?.innerText || '').includes('query 10')")
    assert page.locator(sel("pos")).input_value() == "10"
    shot(page, "head")
    page.click("#head-to-token")
    page.wait_for_url("**/token?**pos=10**")
    wait_figure(page, "token-layers", "gd.layout.title.text.includes('token 10')")
    page.wait_for_function("() => (document.querySelector('#token-info')?.innerText || '').includes('position 10')")
    page.click("[id='{\"pos\":4,\"type\":\"token-chip\"}']")
    page.wait_for_function("() => (document.querySelector('#token-info')?.innerText || '').includes('position 4')")
    wait_figure(page, "token-layers", "gd.layout.title.text.includes('token 4')")
    assert "no route rooted at position 4" in page.inner_text("#token-route")
    shot(page, "token")


def test_token_route_graph_links_nodes_to_heads(server, page):
    page.goto(server.url + "/token?bundle=llama-stats")  # defaults to the last token, which has a route
    wait_figure(page, "token-route-graph", "gd.layout.title.text.startsWith('route to')")
    assert "click either to open the head" in page.inner_text("#token-route")
    shot(page, "token-route")
    n = int(page.locator(sel("pos")).input_value())
    page.locator("#token-route-graph").scroll_into_view_if_needed()
    click_cell(page, "token-route-graph", n, 2 - 0.25)  # A2_n: the planted route's layer-2 edge is head 2's
    page.wait_for_url("**/head?**layer=2**head=2**")


def test_image_overlay_on_a_vlm_bundle(server, page):
    page.goto(server.url + "/image?bundle=vlm/llava")
    wait_figure(page, "image-overlay", "(gd.layout.images || []).length === 1")
    assert "alpha" in title(page, "image-overlay")
    page.get_by_text("from one query token").click()
    wait_figure(page, "image-overlay", "gd.layout.title.text.includes('attention from position')")
    shot(page, "image")
    page.goto(server.url + "/image?bundle=llama-maps")
    assert "no image" in page.locator(".wb-hint").inner_text()


def test_circuits_and_hallucination_views(server, page):
    page.goto(server.url + "/circuits?bundle=llama-stats")
    wait_figure(page, "circuits-graph", "gd.layout.title.text.includes('1 edges')")
    assert "2 heads, 1 edges" in page.inner_text("#circuits-body")
    shot(page, "circuits")
    page.goto(server.url + "/circuits?bundle=llama-maps")
    assert "workbench circuits" in page.locator(".wb-hint").inner_text()
    page.goto(server.url + "/hallucination?bundle=llama-maps")
    wait_figure(page, "hall-heatmap")
    assert page.locator(".wb-tok").count() == 5
    hints = page.inner_text("#hall-notes")
    assert "--probe" in hints and "workbench vhd" not in hints  # VHD needs an image: no hint on a text bundle
    shot(page, "hallucination")


def test_corrupt_bundle_shows_a_panel_and_the_rest_keeps_working(server, page):
    page.goto(server.url + "/model?bundle=broken")
    assert "broken.wbtrace/manifest.json" in page.locator(".wb-error").first.inner_text()
    page.click("[id='{\"page\":\"Runs\",\"type\":\"wb-link\"}']")
    page.locator("#runs-bundles").wait_for()


def test_trace_form_runs_in_the_background_and_adds_a_bundle(server, page):
    page.goto(server.url + "/")
    page.fill("#runs-prompt", "Hello from the browser")
    page.fill("#runs-new-tokens", "2")
    page.fill("#runs-name", "from-browser")
    page.click("#runs-submit")
    page.locator("#runs-new-link").wait_for(timeout=120_000)
    assert page.locator("#runs-new-link").inner_text() == "from-browser"
    page.wait_for_function("() => (document.querySelector('#runs-bundles')?.innerText || '').includes('from-browser')")
    page.fill("#runs-prompt", "")
    page.click("#runs-submit")
    assert "prompt is empty" in page.locator("#runs-form-message .wb-error").inner_text()


def test_two_users_keep_their_own_selection(server, browser):
    first, second = browser.new_context(), browser.new_context()
    try:
        a, b = first.new_page(), second.new_page()
        a.goto(server.url + "/head?bundle=llama-maps&layer=2&head=1")
        b.goto(server.url + "/model?bundle=vlm/llava")
        link = "[id='{\"page\":\"Token\",\"type\":\"wb-link\"}']"
        a.wait_for_function(f"() => (document.querySelector(`{link}`)?.getAttribute('href') || '').includes('llama-maps')")
        b.wait_for_function(f"() => (document.querySelector(`{link}`)?.getAttribute('href') || '').includes('llava')")
        a.reload()
        a.wait_for_function(f"() => (document.querySelector(`{link}`)?.getAttribute('href') || '').includes('llama-maps')")
    finally:
        first.close()
        second.close()


@pytest.fixture(scope="module")
def vhd_server(models, tmp_path_factory):
    """A tiny-llava bundle with the VHD of its generation stored (results/vhd.json), served on its own."""
    from workbench.app import create_app

    import workbench
    from workbench.analyses import divergence
    from workbench.models.registry import data_root

    root = tmp_path_factory.mktemp("vhd")
    image = data_root() / "scenes" / "images" / "scene_0003.png"
    workbench.trace(models("tiny-llava"), "Describe the picture", image=str(image), max_new_tokens=4).save(
        root / "vhd.wbtrace")
    trace = workbench.load(root / "vhd.wbtrace")
    trace.add_result("vhd", divergence.analyse(trace, tracer=models("tiny-llava")).to_json())
    running = Server(create_app(root))
    yield running, workbench.load(root / "vhd.wbtrace")
    running.close()


def test_hallucination_t_vhd_points_sit_on_the_tokens_they_score(vhd_server, page):
    from workbench.app.figures.common import token_text

    server, trace = vhd_server
    stored = trace.results["vhd"]
    start, end = trace.generation["start"], trace.generation["end"]
    # Independently of any stored position: step s scores the s-th generated token, at start + s.
    assert [t["id"] for t in stored["tokens"]] == [t.id for t in trace.tokens[start:end]]
    expected = {start + step: value for step, value in enumerate(stored["t_vhd"])}
    names = [token_text(t.text, 12) for t in trace.tokens[start - 1:end]]
    assert len(set(names)) == len(names)  # the hover's token name tells each token (and the row before) apart
    page.goto(server.url + "/hallucination?bundle=vhd")
    wait_figure(page, "hall-curves", "gd.data.some(t => t.name === 'vhd')")
    points = page.evaluate("""() => { const gd = document.querySelector('#hall-curves .js-plotly-plot');
        const index = gd.data.findIndex(t => t.name === 'vhd'); const t = gd.data[index];
        return Array.from(t.x).map((x, i) => [index, i, x, t.y[i]]).filter(p => p[3] !== null && isFinite(p[3])); }""")
    assert sorted(p[2] for p in points) == sorted(expected)
    for curve, index, x, y in points:
        assert y == pytest.approx(expected[x], abs=1e-6)
        # hover the drawn point: plotly's label must name the token at x, the token this T-VHD value scores
        pixel = page.evaluate("""([x, y]) => { const gd = document.querySelector('#hall-curves .js-plotly-plot');
            const r = gd.querySelector('.nsewdrag').getBoundingClientRect(); const fl = gd._fullLayout;
            return [r.left + fl.xaxis.d2p(x), r.top + fl.yaxis2.d2p(y)]; }""", [x, y])
        page.mouse.move(*pixel)
        page.wait_for_function("""(x) => Array.from(document.querySelectorAll('#hall-curves .hoverlayer .hovertext'))
            .some(h => h.textContent.includes('vhd:') && h.textContent.includes('position ' + x))""", arg=x)
        hover = page.evaluate("""() => Array.from(document.querySelectorAll('#hall-curves .hoverlayer .hovertext'))
            .map(h => h.textContent).find(t => t.includes('vhd:'))""")
        assert f"position {x} {token_text(trace.tokens[x].text, 12)}" in hover
        assert f"vhd: {expected[x]:.3f}" in hover
        page.mouse.move(5, 5)
    shot(page, "hallucination-vhd")
