"""Circuits view builder: the SVD head-to-head graph (Franco & Crovella 2024) laid out by layer.

x = layer (upstream on the left, downstream on the right, so every edge points rightwards), y = head.
Only the `top_k` heaviest edges are drawn, with just the heads they touch: a 30-layer model has thousands
of edges, and all of them at once is a hairball. Edges are coloured by the side of the downstream head's
score they feed (query, key, both, value) and drawn as curves, since a straight edge spanning several
layers would run through the heads in between. Plotly hovers on points, not along lines, so each curve
carries an invisible marker at its middle with the edge's hover text.
"""

from __future__ import annotations

import html
import math
import re

import numpy as np
import plotly.graph_objects as go
from workbench.app.data.results import Graph
from workbench.app.figures.common import FONT, message_figure

TOP_K_CHOICES = (10, 20, 40, 80, 160, 0)  # 0 = every edge
DEFAULT_TOP_K = 40
SIDES = {  # an edge's `sides` -> (legend name, colour)
    "q": ("query side (Q-composition)", "#ff7f0e"),
    "k": ("key side (K-composition)", "#2ca02c"),
    "qk": ("query and key sides", "#9467bd"),
    "v": ("value side (V-composition)", "#1f77b4"),
}
_WIDTHS = (1.2, 2.6, 4.5)  # line widths for the lightest, middle and heaviest third of the drawn weights
_PLOT_WIDTH = 1250  # pixels of plot area assumed for label thinning when no width is given (the app's page)
_LABEL_FONT = 11
_HEAD_ID = re.compile(r"L(\d+)H(\d+)")


def side_of(edge: dict) -> str:
    """The edge's side key: "q", "k", "qk" (both), "v", other letter sets as given (drawn grey), "?" if none."""
    raw = str(edge.get("sides", edge.get("side", ""))).lower().strip()
    raw = {"query": "q", "key": "k", "value": "v", "both": "qk"}.get(raw, raw)
    letters = "".join(letter for letter in "qkv" if letter in raw)
    return letters if letters and set(raw) <= set("qkv+, ") else (raw or "?")


def strongest_edges(graph: Graph, top_k: int = DEFAULT_TOP_K, min_weight: float = 0.0) -> list[dict]:
    """The `top_k` heaviest edges (|weight|; ties by source then target id) of those with |weight| >= min_weight;
    every such edge when top_k is 0."""
    ordered = sorted((e for e in graph.edges if abs(e["weight"]) >= min_weight),
                     key=lambda e: (-abs(e["weight"]), e["source"], e["target"]))
    return ordered if top_k <= 0 else ordered[:top_k]


def _place(node: dict) -> tuple[int, int] | None:
    """(layer, head) of a node, from its attributes or an `L{layer}H{head}` id."""
    layer, head = node.get("layer"), node.get("head")
    if isinstance(layer, int) and isinstance(head, int) and not isinstance(layer, bool) and not isinstance(head, bool):
        return layer, head
    match = _HEAD_ID.fullmatch(str(node["id"]))
    return (int(match[1]), int(match[2])) if match else None


def _curve(start: tuple[float, float], end: tuple[float, float], middle: float, steps: int = 14):
    """Points of a quadratic curve from start to end (x = layer, y = head) bent towards the middle head row,
    more for longer spans; adjacent layers stay straight (nothing lies between them)."""
    (x0, y0), (x1, y1) = start, end
    span = abs(x1 - x0)
    bend = 0.0 if span <= 1 else min(0.22 * (span - 1), 1.6)
    direction = 1.0 if (y0 + y1) / 2 <= middle else -1.0
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2 + direction * bend
    t = np.linspace(0.0, 1.0, steps)
    xs = (1 - t) ** 2 * x0 + 2 * (1 - t) * t * cx + t ** 2 * x1
    ys = (1 - t) ** 2 * y0 + 2 * (1 - t) * t * cy + t ** 2 * y1
    return xs, ys


def _labels(places: list[tuple[int, int]], importance: list[float], *, px_layer: float, px_head: float) -> list[bool]:
    """Which node labels to draw so that none overlap: the most important first, a label dropped when it
    would cover one already kept (labels sit above their node, about 7 px per character)."""
    order = sorted(range(len(places)), key=lambda i: -importance[i])
    kept: list[int] = []
    shown = [False] * len(places)
    for index in order:
        layer, head = places[index]
        width = 0.62 * _LABEL_FONT * len(f"L{layer}H{head}") + 4
        clash = any(abs(layer - places[other][0]) * px_layer < width and
                    abs(head - places[other][1]) * px_head < _LABEL_FONT + 3 for other in kept)
        if not clash:
            kept.append(index)
            shown[index] = True
    return shown


def _edge_hover(edge: dict, side: str, firings: dict, incoming: dict) -> str:
    source, target = html.escape(edge["source"]), html.escape(edge["target"])
    weight = edge["weight"]
    parts = [f"<b>{source} → {target}</b> · {SIDES.get(side, (f'sides {html.escape(side)}',))[0]}",
             f"weight {weight:.3f}"]
    by_side = [f"{name} {edge[key]:.3f}" for name, key in (("Q", "q_weight"), ("K", "k_weight"), ("V", "v_weight"))
               if isinstance(edge.get(key), (int, float)) and not isinstance(edge.get(key), bool)]
    if by_side:
        parts[-1] += " = " + " + ".join(by_side)
    fired = firings.get(edge["target"])
    count = edge.get("count")
    if isinstance(fired, int) and fired > 0:
        kept = f", kept in {count}" if isinstance(count, int) else ""
        parts.append(f"mean share of the score over {target}'s {fired} firings{kept}")
    total = incoming.get(edge["target"], 0.0)
    if total > 0:
        parts.append(f"{100 * abs(weight) / total:.1f}% of all weight into {target}")
    return "<br>".join(parts)


def circuit_figure(graph: Graph, *, top_k: int = DEFAULT_TOP_K, min_weight: float = 0.0,
                   n_layers: int | None = None, n_heads: int | None = None, height: int | None = None,
                   width: int | None = None, title: str | None = None) -> go.Figure:
    """The head-to-head graph: the `top_k` heaviest edges (0 = all) of |weight| >= min_weight and the heads they
    join, at x = layer, y = head, coloured by side (legend), width by weight; hover an edge for its contribution,
    a head for its firings. Node markers carry customdata [layer, head] (a click opens that head).
    n_layers / n_heads: the model's (the axes span the whole model), else the graph's largest + 1."""
    places = {node["id"]: _place(node) for node in graph.nodes}
    usable = [e for e in graph.edges if places.get(e["source"]) and places.get(e["target"])]
    if not usable:
        return message_figure(f"This circuit has no head-to-head edges ({len(graph.nodes)} heads fired, none read "
                              "an upstream head above the coverage and share thresholds).", title=title)
    edges = strongest_edges(Graph(graph.nodes, usable, graph.attrs), top_k, min_weight)
    if not edges:
        return message_figure(f"No edge of weight >= {min_weight:g} among the {len(usable)} edges.", title=title)
    firings = {node["id"]: node.get("firings") for node in graph.nodes}
    incoming: dict[str, float] = {}
    for edge in usable:
        incoming[edge["target"]] = incoming.get(edge["target"], 0.0) + abs(edge["weight"])
    known = [p for p in places.values() if p]
    n_layers = n_layers or 1 + max(p[0] for p in known)
    n_heads = n_heads or 1 + max(p[1] for p in known)
    height = height or int(max(420, min(900, 60 * n_heads + 160)))
    px_layer = (width - 90 if width else _PLOT_WIDTH) / max(n_layers, 1)
    px_head = (height - 150) / max(n_heads, 1)
    middle = (n_heads - 1) / 2
    top = max(abs(e["weight"]) for e in edges) or 1.0

    fig = go.Figure()
    counts: dict[str, int] = {}
    for edge in edges:
        counts[side_of(edge)] = counts.get(side_of(edge), 0) + 1
    for side in sorted(counts, key=lambda s: (s not in SIDES, list(SIDES).index(s) if s in SIDES else 0, s)):
        name, color = SIDES.get(side, (f"sides {html.escape(side)}", "#7f7f7f"))
        mine = [e for e in edges if side_of(e) == side]
        legend = f"{name}: {len(mine)}"
        first_bucket = True
        for bucket, line_width in enumerate(_WIDTHS):
            xs, ys = [], []
            for edge in mine:
                if min(2, int(3 * abs(edge["weight"]) / top)) != bucket:
                    continue
                cx, cy = _curve(places[edge["source"]], places[edge["target"]], middle)
                xs += [*np.round(cx, 3).tolist(), None]  # 3 decimals: a tenth of a pixel, a third of the JSON
                ys += [*np.round(cy, 3).tolist(), None]
            if xs:  # the first drawn bucket carries the legend entry; a legend click toggles the whole side
                fig.add_trace(go.Scatter(x=xs, y=ys, mode="lines", line=dict(color=color, width=line_width),
                                         opacity=0.75, hoverinfo="skip", legendgroup=side, name=legend,
                                         showlegend=first_bucket))
                first_bucket = False
        mids = [_curve(places[e["source"]], places[e["target"]], middle, steps=3) for e in mine]
        fig.add_trace(go.Scatter(
            x=[float(m[0][1]) for m in mids], y=[float(m[1][1]) for m in mids], mode="markers", legendgroup=side,
            name=legend, showlegend=False, marker=dict(size=12, color=color, opacity=0.0),
            hovertext=[_edge_hover(e, side, firings, incoming) for e in mine], hoverinfo="text", meta="edges"))

    used = sorted({e["source"] for e in edges} | {e["target"] for e in edges},
                  key=lambda node: places[node])
    drawn_in = {node: 0 for node in used}
    drawn_out = dict(drawn_in)
    weight_at = {node: 0.0 for node in used}
    for edge in edges:
        drawn_out[edge["source"]] += 1
        drawn_in[edge["target"]] += 1
        weight_at[edge["source"]] += abs(edge["weight"])
        weight_at[edge["target"]] += abs(edge["weight"])
    node_places = [places[node] for node in used]
    shown = _labels(node_places, [weight_at[node] for node in used], px_layer=px_layer, px_head=px_head)
    hovers = []
    for node in used:
        layer, head = places[node]
        fired = firings.get(node)
        hovers.append(f"<b>L{layer}H{head}</b> (layer {layer}, head {head})<br>"
                      + (f"firings {fired}<br>" if isinstance(fired, int) else "")
                      + f"drawn edges: {drawn_in[node]} in, {drawn_out[node]} out<br>click to open the head")
    fig.add_trace(go.Scatter(
        x=[p[0] for p in node_places], y=[p[1] for p in node_places], mode="markers+text",
        text=[f"L{p[0]}H{p[1]}" if keep else "" for p, keep in zip(node_places, shown)], textposition="top center",
        textfont=dict(size=_LABEL_FONT, color="#111", shadow="1px 1px 2px #fff, -1px -1px 2px #fff"),  # over lines
        customdata=[list(p) for p in node_places],
        hovertext=hovers, hoverinfo="text", name="head (click to open)", showlegend=False, meta="heads",
        marker=dict(size=13, color="#1f2937", line=dict(width=1.5, color="#fff"))))

    total = len(usable)
    heads = len({e["source"] for e in usable} | {e["target"] for e in usable})
    heading = title or (f"{len(edges)} strongest of {total} edges, {len(used)} of {heads} connected heads"
                        if len(edges) < total else f"all {total} edges, {heads} connected heads")
    if min_weight > 0 and not title:
        heading += f" (weight >= {min_weight:g})"
    step = max(1, math.ceil(30 * n_layers / (width - 90 if width else _PLOT_WIDTH)))
    fig.update_layout(
        title=heading, template="plotly_white", font=FONT, height=height, width=width, hovermode="closest",
        clickmode="event", margin=dict(l=60, r=20, t=50, b=50), legend=dict(orientation="h", y=-0.12, x=0),
        xaxis=dict(title="layer (upstream → downstream)", tickmode="array", tickvals=list(range(0, n_layers, step)),
                   ticktext=[f"L{layer}" for layer in range(0, n_layers, step)], range=[-0.7, n_layers - 0.3],
                   zeroline=False, showgrid=True, gridcolor="#eef0f3"),
        yaxis=dict(title="head", tickmode="array", tickvals=list(range(n_heads)),
                   ticktext=[f"H{head}" for head in range(n_heads)], range=[n_heads - 0.4, -0.85],
                   zeroline=False, showgrid=True, gridcolor="#eef0f3"),
    )
    return fig
