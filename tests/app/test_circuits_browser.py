"""The Circuits view in real Chromium on a ~100-token SmolLM2 bundle after `workbench circuits`: what is drawn
(LxHy labels that do not overlap, L0..L29 and H0..H8 axis labels, the edges and heads of the top-k control)
against counts made here from results/circuits.json; the control changes them; hovering an edge names it and
its weight; clicking a head opens it. The screenshot lands in out/test-artifacts/app/circuits-smollm2.png."""

from __future__ import annotations

import itertools
import json
import re
import shutil

import pytest

import workbench
from tests.app.app_helpers import Server
from tests.app.test_browser import browser, page, shot, wait_figure  # noqa: F401 - fixtures and helpers shared
from tests.app.test_heads_browser import PROMPT
from tests.workbench.cli.cli_inprocess import run_cli

pytestmark = [pytest.mark.browser, pytest.mark.slow]
EDGE = re.compile(r"(L\d+H\d+) → (L\d+H\d+)")

# What the figure holds, read in the page: edges from the hover texts of the curves' middle markers, heads
# from the node trace, labels and ticks from the SVG plotly drew.
DRAWN = """() => { const root = document.querySelector('#circuits-graph .js-plotly-plot');
    const edges = root.data.filter(t => t.meta === 'edges').flatMap(t => t.hovertext);
    const nodes = root.data.find(t => t.meta === 'heads');
    const layers = root.querySelectorAll('.scatterlayer .trace');
    const labels = Array.from(layers[layers.length - 1].querySelectorAll('.textpoint text')).map(t => {
        const r = t.getBoundingClientRect(); return {text: t.textContent, left: r.left, right: r.right, top: r.top,
                                                     bottom: r.bottom}; });
    return {edges: edges, heads: nodes.x.map((x, i) => [x, nodes.y[i]]), labels: labels,
            points: layers[layers.length - 1].querySelectorAll('.points path').length,
            xticks: Array.from(root.querySelectorAll('.xtick text')).map(t => t.textContent),
            yticks: Array.from(root.querySelectorAll('.ytick text')).map(t => t.textContent),
            title: root.layout.title.text}; }"""


def expected(stored: dict, top_k: int) -> tuple[set, set]:
    """The top_k heaviest edges of results/circuits.json (ties by source, target) and the heads they join."""
    edges = sorted(stored["graph"]["edges"], key=lambda e: (-abs(e["weight"]), e["source"], e["target"]))
    kept = edges[:top_k] if top_k else edges
    return {(e["source"], e["target"]) for e in kept}, {n for e in kept for n in (e["source"], e["target"])}


def check_drawn(tab, stored: dict, top_k: int) -> dict:
    drawn = tab.evaluate(DRAWN)
    edges, heads = expected(stored, top_k)
    assert {EDGE.search(text).groups() for text in drawn["edges"]} == edges and len(drawn["edges"]) == len(edges)
    assert {f"L{x}H{y}" for x, y in drawn["heads"]} == heads and drawn["points"] == len(heads)
    assert drawn["xticks"] == [f"L{layer}" for layer in range(30)] and drawn["yticks"] == [f"H{h}" for h in range(9)]
    labels = [label["text"] for label in drawn["labels"] if label["text"]]
    assert labels and set(labels) <= heads and len(labels) >= 0.8 * len(heads)  # thinned only where they would clash
    boxes = [label for label in drawn["labels"] if label["text"]]
    for a, b in itertools.combinations(boxes, 2):
        assert a["right"] <= b["left"] + 1 or b["right"] <= a["left"] + 1 or a["bottom"] <= b["top"] + 1 or \
            b["bottom"] <= a["top"] + 1, (a, b)
    return drawn


@pytest.fixture(scope="module")
def circuits_server(models, tmp_path_factory):
    """A ~100-token SmolLM2 bundle with the residual decomposition and `workbench circuits` run on it."""
    from workbench.app import create_app

    root = tmp_path_factory.mktemp("circuits") / "traces"
    root.mkdir(parents=True)
    bundle = root / "story.wbtrace"
    workbench.trace(models("smollm2"), PROMPT, max_new_tokens=4, raw=True, decomposition=True).save(bundle)
    code, out, err = run_cli("circuits", bundle)
    assert code == 0, err
    stored = json.loads((bundle / "results" / "circuits.json").read_text())
    assert len(stored["graph"]["edges"]) > 500  # the hairball the top-k control is for
    running = Server(create_app(root))
    yield running, stored
    running.close()
    shutil.rmtree(root, ignore_errors=True)


def test_layered_graph_top_k_hover_and_click(circuits_server, page):  # noqa: F811
    server, stored = circuits_server
    n_nodes, n_edges = len(stored["graph"]["nodes"]), len(stored["graph"]["edges"])
    page.goto(server.url + "/circuits?bundle=story")
    wait_figure(page, "circuits-graph", "gd.layout.title.text.startsWith('40 strongest')")
    assert f"{n_nodes} heads, {n_edges} edges" in page.inner_text("#circuits-summary")
    drawn = check_drawn(page, stored, 40)
    assert f"40 strongest of {n_edges} edges" in drawn["title"]
    page.mouse.move(5, 5)
    shot(page, "circuits-smollm2")

    # hover the heaviest edge at the middle of its curve: its names, side and weight
    heaviest = max(stored["graph"]["edges"], key=lambda e: abs(e["weight"]))
    point = page.evaluate("""(name) => { const gd = document.querySelector('#circuits-graph .js-plotly-plot');
        const fl = gd._fullLayout; const r = gd.querySelector('.nsewdrag').getBoundingClientRect();
        for (const t of gd.data.filter(t => t.meta === 'edges')) {
            const i = t.hovertext.findIndex(h => h.includes(name));
            if (i >= 0) { return [r.left + fl.xaxis.d2p(t.x[i]), r.top + fl.yaxis.d2p(t.y[i])]; } } return null; }""",
                          f"{heaviest['source']} → {heaviest['target']}")
    page.mouse.move(point[0] - 4, point[1] - 4)
    page.mouse.move(*point, steps=3)
    page.wait_for_function("() => (document.querySelector('#circuits-graph .hoverlayer') || {}).textContent"
                           f".includes('{heaviest['source']} → {heaviest['target']}')")
    hover = page.evaluate("() => document.querySelector('#circuits-graph .hoverlayer').textContent")
    assert f"weight {heaviest['weight']:.3f}" in hover and "side" in hover and "% of all weight into" in hover

    # the control is applied on the server: fewer edges, then all of them
    page.locator("#circuits-top label", has_text="10").first.click()
    wait_figure(page, "circuits-graph", "gd.layout.title.text.startsWith('10 strongest')")
    assert len(check_drawn(page, stored, 10)["edges"]) == 10
    page.locator("#circuits-top label", has_text="all").click()
    wait_figure(page, "circuits-graph", "gd.layout.title.text.startsWith('all ')")
    assert len(page.evaluate(DRAWN)["edges"]) == n_edges
    page.locator("#circuits-top label", has_text="40").click()
    wait_figure(page, "circuits-graph", "gd.layout.title.text.startsWith('40 strongest')")

    # click the source of the heaviest edge: its Head page opens
    layer, head = (int(v) for v in re.findall(r"\d+", heaviest["source"]))
    pixel = page.evaluate("""([x, y]) => { const gd = document.querySelector('#circuits-graph .js-plotly-plot');
        const r = gd.querySelector('.nsewdrag').getBoundingClientRect(); const fl = gd._fullLayout;
        return [r.left + fl.xaxis.d2p(x), r.top + fl.yaxis.d2p(y)]; }""", [layer, head])
    page.mouse.move(pixel[0] - 3, pixel[1] - 3)
    page.mouse.click(*pixel)
    page.wait_for_url(f"**/head?**layer={layer}**head={head}**")
    wait_figure(page, "head-map", f"gd.layout.title.text.startsWith('layer {layer}, head {head}')")
