"""The Token view's route graph in real Chromium on a ~100-token SmolLM2 bundle traced with the residual
decomposition and routed (as `workbench trace ... --decomposition` then `workbench routes --threshold 0.02`):
token labels on the x axis and L0 .. L29 on the y axis are drawn, the nodes drawn are the ones networkx finds
still reaching the prediction in results/routes.json at each threshold, the threshold control changes them,
hovering a node fills the Logit lens panel beside the graph with that node (the root's top token is the greedy
next token, at rank 1), and a click opens the head that fed the node. Screenshots land in out/test-artifacts/app/
(route-smollm2.png is docs/images/app-route.png, token-smollm2.png is docs/images/app-token.png)."""

from __future__ import annotations

import html
import json
import shutil

import networkx as nx
import pytest

import workbench
from tests.app.app_helpers import ARTIFACTS, Server
from tests.app.test_browser import browser, page, sel, shot, wait_figure  # noqa: F401 - fixtures and helpers shared
from tests.app.test_heads_browser import PROMPT

pytestmark = [pytest.mark.browser, pytest.mark.slow]
TAU = 0.02  # below the reference's 0.04: on SmolLM2 the route then spans a few hundred nodes on many tokens


@pytest.fixture(scope="module")
def routed_server(models, tmp_path_factory):
    from workbench.app import create_app

    from workbench.analyses import routes

    root = tmp_path_factory.mktemp("routes") / "traces"
    root.mkdir(parents=True)
    workbench.trace(models("smollm2"), PROMPT, max_new_tokens=4, raw=True, decomposition=True).save(
        root / "story.wbtrace")
    trace = workbench.load(root / "story.wbtrace")
    assert 90 <= len(trace.tokens) <= 130
    trace.add_result("routes", routes.analyse(trace, threshold=TAU, head_types=False).to_json())
    running = Server(create_app(root))
    yield running, root / "story.wbtrace"
    running.close()
    shutil.rmtree(root, ignore_errors=True)


def stored_route(bundle) -> tuple[nx.DiGraph, str, int]:
    """The route as results/routes.json on disk holds it (read here with networkx, not the app's reader)."""
    data = json.loads((bundle / "results" / "routes.json").read_text())
    [route] = data["routes"]
    return nx.node_link_graph(route["graph"], directed=True, edges="edges"), route["output"], route["position"]


def expected_nodes(graph: nx.DiGraph, root: str, threshold: float) -> set[str]:
    kept = nx.DiGraph([(u, v) for u, v, w in graph.edges(data="weight") if w >= threshold])
    kept.add_node(root)
    return nx.ancestors(kept, root) | {root}


def drawn_node_count(tab) -> int:
    """Node markers plotly drew in the SVG (points of the traces marked as nodes)."""
    return tab.evaluate("""() => { const gd = document.querySelector('#token-route-graph .js-plotly-plot');
        const layers = gd.querySelectorAll('.scatterlayer .trace');
        return gd.data.reduce((n, t, i) => n + (t.meta === 'nodes' ? layers[i].querySelectorAll('.point').length : 0),
                              0); }""")


def ticks(tab, axis: str) -> list[str]:
    return tab.evaluate(f"() => Array.from(document.querySelectorAll('#token-route-graph .{axis}tick text'))"
                        ".map(t => t.textContent)")


def point_pixel(tab, x: float, y: float) -> list[float]:
    return tab.evaluate("""([x, y]) => { const gd = document.querySelector('#token-route-graph .js-plotly-plot');
        const r = gd.querySelector('.nsewdrag').getBoundingClientRect(); const fl = gd._fullLayout;
        return [r.left + fl.xaxis.d2p(x), r.top + fl.yaxis.d2p(y)]; }""", [x, y])


def wait_panel(tab, node: str) -> None:
    """Until the Logit lens panel shows `node` (its server callback answered the hover)."""
    tab.wait_for_function(f"""() => (document.querySelector('#token-lens-node')?.textContent || '') === '{node}'
        && document.querySelectorAll('#token-lens-top tbody tr').length > 0""", timeout=120_000)


def test_route_graph_axes_counts_threshold_hover_and_click(routed_server, page):  # noqa: F811
    from workbench.app.figures.common import token_text

    server, bundle = routed_server
    trace = workbench.load(bundle)
    texts = [t.text for t in trace.tokens]
    graph, root, position = stored_route(bundle)
    assert root == f"I29_{position}" and position == len(texts) - 2  # explains the last generated token
    page.goto(server.url + f"/token?bundle=story&pos={position}")
    wait_figure(page, "token-route-graph", "gd.layout.title.text.startsWith('route to')")
    page.locator("#token-route-graph").scroll_into_view_if_needed()

    assert ticks(page, "y") == ["emb"] + [f"L{layer}" for layer in range(30)]
    labels = ticks(page, "x")
    assert 30 <= len(labels) <= len(texts)
    for label in labels:  # each names the token at its own position
        text, _, number = label.rpartition(" ")
        assert text == token_text(texts[int(number)], 10)
    assert f"{token_text(texts[position], 10)} {position}" in labels  # the explained token is always labelled

    at_tau = expected_nodes(graph, root, TAU)
    assert len(at_tau) == graph.number_of_nodes() > 100  # every stored edge is above the tau it was built with
    assert drawn_node_count(page) == len(at_tau)
    # hover the deepest node on another token (an attention route into the prediction): the panel reads it
    side = max((n for n in at_tau if n[0] in "AI" and int(n.split("_")[1]) != position),
               key=lambda n: int(n[1:].split("_")[0]))
    layer, token = (int(v) for v in side[1:].split("_"))
    page.mouse.move(*point_pixel(page, token, layer + (0.25 if side[0] == "I" else -0.25)), steps=4)
    page.wait_for_function(f"""() => (document.querySelector('#token-route-graph .hoverlayer')?.textContent || '')
        .includes('{side} ·')""")
    hover = page.evaluate("() => document.querySelector('#token-route-graph .hoverlayer').textContent")
    assert "logit lens: in the panel beside" in hover and "reads as" not in hover  # the figure carries no lens
    wait_panel(page, side)
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.locator("#token-route-row").screenshot(path=str(ARTIFACTS / "route-smollm2.png"))
    # hover the root: the logit lens of the last layer's output is the model's greedy choice, the next token
    page.mouse.move(5, 5)
    page.mouse.move(*point_pixel(page, position, 29.25), steps=4)
    wait_panel(page, root)
    cells = page.evaluate("() => Array.from(document.querySelectorAll('#token-lens-top tbody tr'))"
                          ".map(r => Array.from(r.children).map(c => c.textContent))")
    assert cells[0][:2] == ["1", token_text(texts[position + 1], 24)]
    assert float(cells[0][2]) >= max(float(row[2]) for row in cells)
    assert f"rank 1, p = {cells[0][2]}" in page.inner_text("#token-lens")
    shot(page, "token-smollm2")  # the whole Token view (docs/images/app-token.png)
    page.mouse.move(5, 5)

    page.fill("#token-route-threshold", "0.1")
    page.press("#token-route-threshold", "Enter")
    wait_figure(page, "token-route-graph", "gd.layout.title.text.includes('>= 0.1 ')")
    at_tenth = expected_nodes(graph, root, 0.1)
    assert drawn_node_count(page) == len(at_tenth) < len(at_tau)

    # click an after-attention node of the root's column: the head carrying most of its attention opens
    layer = 20
    parts = [data["heads"] for _, target, data in graph.in_edges(f"A{layer}_{position}", data=True)
             if data.get("heads") and data["weight"] >= 0.1]
    head = max(range(9), key=lambda h: sum(p[h] for p in parts))
    assert f"A{layer}_{position}" in at_tenth
    page.mouse.click(*point_pixel(page, position, layer - 0.25))
    page.wait_for_url(f"**/head?**layer={layer}**head={head}**")
    assert page.locator(sel("pos")).input_value() == str(position)
