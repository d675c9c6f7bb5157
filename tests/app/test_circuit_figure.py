"""The Circuits view's figure (app.figures.circuits): on planted-induction the planted edge (ground_truth.json)
is exactly what the default control draws; on a seeded random graph the drawn edges and heads are the top-k
recomputed here with networkx, colours and legend follow each edge's side, hover shares match sums done here."""

from __future__ import annotations

import json
import re

import networkx as nx
import numpy as np
import pytest
from workbench.app.data.results import graph, graph_of
from workbench.app.figures.circuits import DEFAULT_TOP_K, SIDES, circuit_figure

import workbench
from workbench.analyses import circuits
from workbench.models.registry import data_root

EDGE = re.compile(r"<b>(L\d+H\d+) → (L\d+H\d+)</b>")


def numeric_axes(fig) -> None:
    """Positions only (never names as categories): every x, y is a number or a line break (None)."""
    for trace in fig.data:
        for values in (trace.x, trace.y):
            assert all(v is None or isinstance(v, (int, float)) for v in values), trace.name
    assert fig.layout.xaxis.type in (None, "linear") and fig.layout.yaxis.type in (None, "linear")


def drawn_edges(fig) -> list[tuple[str, str, str]]:
    """(source, target, colour) of every edge drawn, read from the hover markers at the curves' middles."""
    out = []
    for trace in fig.data:
        if trace.meta == "edges":
            out += [(*EDGE.search(text).groups(), trace.marker.color) for text in trace.hovertext]
    return out


def drawn_heads(fig) -> list[tuple[int, int]]:
    [nodes] = [t for t in fig.data if t.meta == "heads"]
    assert [list(c) for c in nodes.customdata] == [[int(x), int(y)] for x, y in zip(nodes.x, nodes.y)]
    return [(int(x), int(y)) for x, y in zip(nodes.x, nodes.y)]


@pytest.fixture(scope="module")
def planted():
    truth = json.loads((data_root() / "models/planted/induction/ground_truth.json").read_text())
    loaded = workbench.load_model("planted-induction")
    trace = workbench.trace(loaded, truth["probe"]["sequences"][1], raw=True, decomposition=True)
    return truth, trace, circuits.analyse(trace, model=loaded)


def test_planted_edge_is_the_one_drawn_at_the_default_setting(planted):
    truth, trace, result = planted
    [edge] = truth["circuit"]["edges"]
    upstream, downstream = "L{}H{}".format(*edge["upstream"]), "L{}H{}".format(*edge["downstream"])
    fig = circuit_figure(graph_of(result.graph).value, n_layers=trace.n_layers(), n_heads=trace.n_heads())
    numeric_axes(fig)
    assert drawn_edges(fig) == [(upstream, downstream, SIDES["k"][1])]  # K-composition, nothing else
    assert sorted(drawn_heads(fig)) == sorted([tuple(edge["upstream"]), tuple(edge["downstream"])])
    [nodes] = [t for t in fig.data if t.meta == "heads"]
    assert sorted(nodes.text) == sorted([upstream, downstream])
    assert list(fig.layout.xaxis.ticktext) == ["L0", "L1"]
    assert list(fig.layout.yaxis.ticktext) == ["H0", "H1", "H2", "H3"]
    legend = [t.name for t in fig.data if t.showlegend]
    assert legend == [f"{SIDES['k'][0]}: 1"]
    # the app's view of the stored result draws the same (JSON round trip)
    stored = type(result).from_json(json.loads(json.dumps(result.to_json())))
    again = circuit_figure(graph_of(stored.graph).value, n_layers=2, n_heads=4)
    assert drawn_edges(again) == drawn_edges(fig)


def _random_graph(seed: int = 0, n_layers: int = 30, n_heads: int = 9, n_edges: int = 300) -> dict:
    """Node-link JSON of a random layered graph, distinct weights, every side kind (value included)."""
    rng = np.random.default_rng(seed)
    nodes = [{"id": f"L{layer}H{h}", "layer": layer, "head": h, "firings": int(rng.integers(1, 20))}
             for layer in range(n_layers) for h in range(n_heads)]
    pairs, edges = set(), []
    while len(edges) < n_edges:
        a, b = sorted(rng.choice(n_layers, 2, replace=False))
        source, target = f"L{a}H{rng.integers(n_heads)}", f"L{b}H{rng.integers(n_heads)}"
        if (source, target) in pairs:
            continue
        pairs.add((source, target))
        q, k = rng.random(2) * rng.choice([0, 1], 2, p=[0.3, 0.7])
        sides = str(rng.choice(["q", "k", "qk", "v"])) if q + k > 0 else "v"
        weight = round(float(q + k) if sides != "v" else float(rng.random()), 6) + len(edges) * 1e-9
        edges.append({"source": source, "target": target, "weight": weight, "q_weight": q, "k_weight": k,
                      "sides": sides, "count": int(rng.integers(1, 5))})
    return {"nodes": nodes, "edges": edges}


@pytest.mark.parametrize("top_k", [10, DEFAULT_TOP_K, 0])
def test_top_k_draws_the_heaviest_edges_and_only_the_heads_they_join(top_k):
    raw = _random_graph()
    network = nx.DiGraph()
    for edge in raw["edges"]:
        network.add_edge(edge["source"], edge["target"], weight=edge["weight"], sides=edge["sides"])
    ranked = sorted(network.edges(data=True), key=lambda e: -e[2]["weight"])
    kept = ranked[:top_k] if top_k else ranked
    fig = circuit_figure(graph(raw).value, top_k=top_k, n_layers=30, n_heads=9)
    numeric_axes(fig)
    drawn = drawn_edges(fig)
    assert sorted(d[:2] for d in drawn) == sorted((u, v) for u, v, _ in kept)
    colours = {(u, v): SIDES[data["sides"]][1] for u, v, data in kept}
    assert all(colours[(u, v)] == colour for u, v, colour in drawn)
    heads = network.edge_subgraph([(u, v) for u, v, _ in kept]).nodes
    assert sorted(drawn_heads(fig)) == sorted(tuple(int(x) for x in re.findall(r"\d+", n)) for n in heads)
    legend = sorted(t.name for t in fig.data if t.showlegend)
    counts = {}
    for _, _, data in kept:
        counts[data["sides"]] = counts.get(data["sides"], 0) + 1
    assert legend == sorted(f"{SIDES[side][0]}: {n}" for side, n in counts.items())
    assert list(fig.layout.xaxis.ticktext) == [f"L{layer}" for layer in range(30)]
    assert f"{len(kept)} strongest of 300 edges" in fig.layout.title.text or (not top_k and "all 300" in
                                                                            fig.layout.title.text)


def test_edge_hover_gives_weight_sides_and_share_of_the_target():
    raw = _random_graph(seed=1)
    fig = circuit_figure(graph(raw).value, top_k=5)
    into = {}
    for edge in raw["edges"]:
        into[edge["target"]] = into.get(edge["target"], 0.0) + edge["weight"]
    by_pair = {(e["source"], e["target"]): e for e in raw["edges"]}
    hovers = [text for t in fig.data if t.meta == "edges" for text in t.hovertext]
    assert len(hovers) == 5
    for text in hovers:
        edge = by_pair[EDGE.search(text).groups()]
        assert f"weight {edge['weight']:.3f} = Q {edge['q_weight']:.3f} + K {edge['k_weight']:.3f}" in text
        assert f"{100 * edge['weight'] / into[edge['target']]:.1f}% of all weight into {edge['target']}" in text
        assert SIDES[edge["sides"]][0] in text


def test_labels_thin_out_on_a_narrow_figure_and_never_overlap():
    raw = _random_graph(seed=2, n_edges=400)
    wide = circuit_figure(graph(raw).value, top_k=0, width=1400)
    narrow = circuit_figure(graph(raw).value, top_k=0, width=500)
    for fig in (wide, narrow):
        [nodes] = [t for t in fig.data if t.meta == "heads"]
        plot_width = fig.layout.width - fig.layout.margin.l - fig.layout.margin.r
        px_per_layer = plot_width / (fig.layout.xaxis.range[1] - fig.layout.xaxis.range[0])
        labelled = [(x, y) for x, y, text in zip(nodes.x, nodes.y, nodes.text) if text]
        for i, (x1, y1) in enumerate(labelled):  # same row: label centres at least a label (5 chars) apart
            assert all(abs(x1 - x2) * px_per_layer >= 5 * 5.5 for x2, y2 in labelled[i + 1:] if y2 == y1)
    labels = [sum(1 for text in t.text if text) for fig in (wide, narrow) for t in fig.data if t.meta == "heads"]
    assert labels[0] == len(drawn_heads(wide)) > 200 and 0 < labels[1] < labels[0] / 2  # wide: every head named


def test_a_graph_without_edges_says_so():
    fig = circuit_figure(graph({"nodes": [{"id": "L1H0", "layer": 1, "head": 0}], "edges": []}).value)
    assert "no head-to-head edges" in fig.layout.annotations[0].text
