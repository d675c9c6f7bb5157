"""The Token view's route graph (app.figures.routes) and its node contents (app.data.route_lens), on real routes
of planted-induction and tiny-llama: what is drawn at a threshold is the part of the route networkx finds still
reaching the root, information flows upwards, axes carry layer and token labels, hover names the heads behind
an edge as shares of its stored per-head parts, clicks carry the head that fed the node, and the logit lens
of the last layer's output is the model's own next-token distribution (HF forward), in the figure's hover
(notebook) and in the app's one-node panel with the rank of the next token."""

from __future__ import annotations

import html
import itertools
import json
import re

import networkx as nx
import pytest
import torch
from workbench.app.data.results import graph_of
from workbench.app.data.route_lens import node_tokens, node_vectors
from workbench.app.figures.common import token_text
from workbench.app.figures.routes import route_figure

import workbench
from workbench.analyses import routes
from workbench.errors import InputError

NODE = re.compile(r"<b>([XAMI]\d+_\d+)</b>")
EDGE = re.compile(r"<b>([XAMI]\d+_\d+) → ([XAMI]\d+_\d+)</b>")


@pytest.fixture(scope="module")
def planted(models):
    loaded = models("planted-induction")
    trace = workbench.trace(loaded, "f x r c e l f x r c e l", raw=True, decomposition=True)
    result = routes.analyse(trace, position=-1, threshold=0.01, head_types=False)
    return loaded, trace, result.routes[0]


def drawn_nodes(fig) -> dict[str, tuple[float, float, list]]:
    """{node id: (x, y, customdata)} of every node marker."""
    out = {}
    for trace in fig.data:
        if trace.meta == "nodes":
            for x, y, custom, text in zip(trace.x, trace.y, trace.customdata, trace.hovertext):
                out[NODE.search(text)[1]] = (x, y, list(custom))
    return out


def drawn_edges(fig) -> dict[tuple[str, str], tuple[str, list]]:
    """{(source, target): (hover text, customdata)} of every edge's hover marker."""
    return {EDGE.search(text).groups(): (text, list(custom)) for trace in fig.data if trace.meta == "edges"
            for text, custom in zip(trace.hovertext, trace.customdata)}


def expected(route, threshold: float) -> tuple[set[str], set[tuple[str, str]]]:
    """Independent: the root plus its ancestors in the graph of edges >= threshold, and the edges among them."""
    kept = nx.DiGraph([(u, v) for u, v, w in route.graph.edges(data="weight") if w >= threshold])
    kept.add_node(route.output)
    nodes = nx.ancestors(kept, route.output) | {route.output}
    return nodes, {(u, v) for u, v in kept.edges if v in nodes}


def test_threshold_draws_what_still_reaches_the_root(planted):
    _, trace, route = planted
    texts = [t.text for t in trace.tokens]
    weights = sorted({w for _, _, w in route.graph.edges(data="weight")})
    counts = []
    for threshold in (0.0, weights[len(weights) // 2], weights[-1]):
        fig = route_figure(graph_of(route.graph).value, texts=texts, n_layers=trace.n_layers(), root=route.output,
                           threshold=threshold)
        nodes, edges = expected(route, threshold)
        assert set(drawn_nodes(fig)) == nodes
        assert set(drawn_edges(fig)) == edges
        assert f"{len(nodes)} nodes, {len(edges)} edges" in fig.layout.title.text
        counts.append(len(nodes))
    assert counts[0] > counts[1] >= counts[2] >= 1
    assert "No edge" in route_figure(graph_of(route.graph).value, texts=texts, n_layers=trace.n_layers(),
                                     root=route.output, threshold=1.01).layout.annotations[0].text


def test_grid_axes_and_upward_flow(planted):
    _, trace, route = planted
    texts = [t.text for t in trace.tokens]
    fig = route_figure(graph_of(route.graph).value, texts=texts, n_layers=trace.n_layers(), root=route.output)
    nodes = drawn_nodes(fig)
    for source, target in drawn_edges(fig):
        assert nodes[target][1] > nodes[source][1], (source, target)  # embedding at the bottom, output on top
    for name, (x, _, _) in nodes.items():
        assert round(x) == int(name.split("_")[1])  # x is the node's token position (FFN squares just beside it)
    layers = dict(zip(fig.layout.yaxis.ticktext, fig.layout.yaxis.tickvals))
    assert list(layers) == ["emb"] + [f"L{layer}" for layer in range(trace.n_layers())]
    for layer in range(trace.n_layers()):  # the layer's label sits between its attention and its output
        position = int(route.output.split("_")[1])
        if f"A{layer}_{position}" in nodes and f"I{layer}_{position}" in nodes:
            assert nodes[f"A{layer}_{position}"][1] < layers[f"L{layer}"] < nodes[f"I{layer}_{position}"][1]
    ticks = dict(zip(fig.layout.xaxis.tickvals, fig.layout.xaxis.ticktext))
    assert set(ticks) == set(range(len(texts)))  # 13 tokens: every one labelled
    for position, label in ticks.items():
        assert label == f"{html.escape(token_text(texts[position], 10), quote=False)} {position}"


def test_labels_thin_at_100_tokens_and_keep_the_root():
    from workbench.app.data.results import Graph

    texts = [f"<tok{i}>" for i in range(101)]
    nodes = [{"id": "X0_57", "kind": "embedding", "layer": -1, "position": 57},
             {"id": "A0_57", "kind": "attention", "layer": 0, "position": 57}]
    fig = route_figure(Graph(nodes, [{"source": "X0_57", "target": "A0_57", "weight": 0.5, "kind": "attention",
                                      "heads": [0.1, 0.4]}], {}), texts=texts, n_layers=30, root="A0_57", width=800)
    ticks = list(fig.layout.xaxis.tickvals)
    assert 57 in ticks and len(ticks) <= 800 // 14
    assert all(b - a >= 2 for a, b in itertools.pairwise(ticks))
    assert "&lt;tok57&gt;" in fig.layout.xaxis.ticktext[ticks.index(57)]  # escaped, never raw HTML
    assert len(fig.layout.yaxis.tickvals) <= (fig.layout.height - 210) // 18 + 1


def test_hover_names_heads_by_share_and_clicks_carry_the_feeding_head(planted):
    _, trace, route = planted
    fig = route_figure(graph_of(route.graph).value, texts=[t.text for t in trace.tokens], n_layers=trace.n_layers(),
                       root=route.output)
    edges = drawn_edges(fig)
    checked = 0
    for source, target, data in route.graph.edges(data=True):
        heads = data.get("heads")
        if not heads or sum(heads) <= 0:
            continue
        text, custom = edges[(source, target)]
        top = max(range(len(heads)), key=lambda h: heads[h])
        share = 100 * heads[top] / sum(v for v in heads if v > 0)
        assert f"heads: H{top} {share:.0f}%" in text
        assert custom == [int(target[1:].split("_")[0]), top, int(target.split("_")[1])]
        checked += 1
    assert checked
    into: dict[tuple[int, int], torch.Tensor] = {}  # per (layer, position): summed parts into its A node
    for _, target, heads in route.graph.edges(data="heads"):
        if heads and target.startswith("A"):
            key = tuple(int(v) for v in target[1:].split("_"))
            into[key] = into.get(key, torch.zeros(len(heads))) + torch.tensor(heads)
    for name, (_, _, custom) in drawn_nodes(fig).items():
        assert custom[3] == name  # the lens panel reads the hovered node's id
        if name.startswith("X"):
            assert custom[0] is None  # embeddings belong to no layer: nothing to open
        else:
            layer, position = (int(v) for v in name[1:].split("_"))
            assert custom[:3] == [layer, int(into[(layer, position)].argmax()) if (layer, position) in into else 0,
                                  position]


@pytest.mark.parametrize("model", ["tiny-gpt2", "tiny-llama"])  # planted-induction's unembedding is flat
def test_node_contents_match_the_models_own_forward(models, model):
    loaded = models(model)
    trace = workbench.trace(loaded, "the cat sat on the mat and the cat", raw=True, decomposition=True)
    n, last = len(trace.tokens), trace.n_layers() - 1
    ids = torch.tensor([[t.id for t in trace.tokens]])
    with torch.inference_mode():
        out = loaded.model(ids, output_hidden_states=True)
    vectors = node_vectors(trace, ["X0_3", f"I0_{n - 1}", f"A1_{n - 2}", f"M1_{n - 2}", f"I1_{n - 2}"])
    torch.testing.assert_close(vectors["X0_3"], out.hidden_states[0][0, 3], atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(vectors[f"I0_{n - 1}"], out.hidden_states[1][0, n - 1], atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(vectors[f"M1_{n - 2}"] + vectors[f"A1_{n - 2}"], vectors[f"I1_{n - 2}"])
    lens = node_tokens(trace, [f"I{last}_{p}" for p in range(n)], model=loaded, top=3)
    for position in range(n):  # the last layer's output through norm + unembedding is the model's prediction
        probabilities, tokens = out.logits[0, position].float().softmax(-1).topk(3)
        got = lens[f"I{last}_{position}"]
        assert [text for text, _ in got] == [loaded.tokenizer.decode([int(t)]) for t in tokens]
        assert [p for _, p in got] == pytest.approx(probabilities.tolist(), abs=1e-4)
    with pytest.raises(InputError, match="outside the trace"):
        node_vectors(trace, [f"A{last + 1}_0"])
    with pytest.raises(InputError, match="--decomposition"):
        node_vectors(workbench.trace(loaded, "the cat", raw=True), ["X0_0"])


def test_hover_shows_the_lens_or_says_what_is_missing(planted):
    loaded, trace, route = planted
    texts = [t.text for t in trace.tokens]
    lens = node_tokens(trace, list(route.graph.nodes), model=loaded)
    fig = route_figure(graph_of(route.graph).value, texts=texts, n_layers=trace.n_layers(), root=route.output,
                       lens=lens)
    hovers = {NODE.search(text)[1]: text for t in fig.data if t.meta == "nodes" for text in t.hovertext}
    token, probability = lens[route.output][0]
    assert f"{token_text(token, 16)} {probability:.2f}" in hovers[route.output]
    shown = html.escape(token_text(texts[-1], 60), quote=False)
    assert f"token {int(route.output.split('_')[1])} <b>{shown}</b>" in hovers[route.output]
    bare = route_figure(graph_of(route.graph).value, texts=texts, n_layers=trace.n_layers(), root=route.output,
                        lens_note="top tokens unavailable: no model")
    assert all("top tokens unavailable: no model" in text for t in bare.data if t.meta == "nodes" for text in t.hovertext)


def test_app_says_why_node_contents_are_missing(traces_dir):
    from workbench.app.data.recompute import ModelPool
    from workbench.app.data.service import AppData

    class NoLoads(ModelPool):
        def get(self, name):
            raise AssertionError(f"loaded {name} for a bundle that cannot feed the lens")

    with pytest.raises(InputError, match="--no-recompute"):
        AppData(traces_dir, allow_recompute=False).route_node_lens("llama-stats", "A0_1")
    with pytest.raises(InputError, match="--decomposition"):  # checked before the model loads
        AppData(traces_dir, pool=NoLoads()).route_node_lens("llama-stats", "A0_1")


def test_route_panel_draws_without_node_contents_and_the_lens_panel_says_why(traces_dir):
    from workbench.app import create_app
    from workbench.app.pages import token

    n = len(workbench.load(traces_dir / "llama-stats.wbtrace").tokens)
    with create_app(traces_dir, allow_trace=False).server.app_context():
        _, fig = token.route_view("llama-stats", n - 1, 0.7)  # the planted route: 0.6 attention, 0.9 residual edges
        panel = json.dumps(token.lens_panel("llama-stats", n - 1, f"A2_{n - 1}"), default=_plotly_json)
    hovers = [text for t in fig.data if t.meta == "nodes" for text in t.hovertext]
    assert hovers and all(token.LENS_NOTE in text and "top tokens" not in text for text in hovers)
    assert sorted(NODE.search(text)[1] for text in hovers) == [f"A2_{n - 1}", f"I2_{n - 1}"]  # 0.6 edges dropped
    assert "top tokens unavailable" in panel and "--decomposition" in panel


def _plotly_json(value):
    return value.to_plotly_json()


def test_lens_panel_reads_one_node_as_the_model_does(tmp_path):
    """The app's panel on a tiny-llama bundle with the decomposition: the root's top tokens and the rank of the
    next token are the model's own logits (HF forward, ranked here by sorting), any node of the grid reads."""
    from workbench.app import create_app
    from workbench.app.pages import token

    loaded = workbench.load_model("tiny-llama")
    trace = workbench.trace(loaded, "the cat sat on the mat and the cat", max_new_tokens=2, raw=True,
                            decomposition=True)
    trace.save(tmp_path / "lens.wbtrace")
    saved = workbench.load(tmp_path / "lens.wbtrace")
    saved.add_result("routes", routes.analyse(saved, threshold=0.01, head_types=False).to_json())  # the last row
    n, last = len(saved.tokens), saved.n_layers() - 1
    position = n - 2  # the row that predicted the last generated token
    ids = torch.tensor([[t.id for t in saved.tokens]])
    with torch.inference_mode():
        out = loaded.model(ids, output_hidden_states=True)
    probabilities = out.logits[0, position].float().softmax(-1)
    order = probabilities.argsort(descending=True).tolist()
    with create_app(tmp_path, allow_trace=False).server.app_context():
        lens = token.data().route_node_lens("lens", f"I{last}_{position}", saved.tokens[n - 1].id)
        panel = json.dumps(token.lens_panel("lens", position), default=_plotly_json)  # default: the root
        middle = token.data().route_node_lens("lens", f"I0_{position - 1}")  # layer 0's output: HF's hidden state 1
    assert [text for text, _ in lens.top] == [loaded.tokenizer.decode([t]) for t in order[:len(lens.top)]]
    assert [p for _, p in lens.top] == pytest.approx(probabilities[order[:len(lens.top)]].tolist(), abs=1e-4)
    text, rank, p = lens.watched
    assert rank == order.index(saved.tokens[n - 1].id) + 1 == 1  # greedy generation: the next token is the top one
    assert p == pytest.approx(float(probabilities[saved.tokens[n - 1].id]), abs=1e-4)
    assert f"I{last}_{position}" in panel and "rank 1" in panel
    expected = loaded.model.lm_head(loaded.model.model.norm(out.hidden_states[1][0, position - 1])).softmax(-1)
    assert [p for _, p in middle.top] == pytest.approx(expected.topk(len(middle.top)).values.tolist(), abs=1e-4)
    assert middle.watched is None

