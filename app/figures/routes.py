"""Token view builder: the information-flow route of one prediction (Ferrando & Voita 2024), drawn the way the
LLM Transparency Tool draws it: a grid of x = token position, y = depth.

Each layer l holds three nodes per token: the residual after attention (A{l}, below the layer's tick), the
FFN block (M{l}, a square just right of the token, level with the tick) and the residual after the FFN (I{l},
above the tick); the embeddings (X0) sit on the bottom row. Edges are straight segments whose width and
opacity grow with their contribution. Plotly hovers on points, not along lines, so each edge carries an
invisible marker at its middle with its hover text (the heads behind it and their shares).

Markers carry customdata [layer, head, position] (head: the one carrying most of the node's or edge's
attention), which the page turns into a link to that head; embedding nodes carry no layer. Node markers add
their id ([layer, head, position, node id]), which the page's logit-lens panel reads on hover.

What a node holds (its logit lens) costs about 1 ms per node on a 49k vocabulary, so the app leaves it out
of the figure and reads one node at a time beside it; small routes can carry it in the hover (`lens`).
"""

from __future__ import annotations

import html
import math

import numpy as np
import plotly.graph_objects as go
from workbench.app.data.results import Graph
from workbench.app.figures.common import FONT, labels_that_fit, message_figure, position_ticks, token_label

# node kind -> (legend name, colour, marker symbol, y offset from the layer's tick, x offset in positions)
NODE_KINDS = {
    "embedding": ("embedding", "#7f7f7f", "circle", 0.0, 0.0),
    "attention": ("after attention", "#1f77b4", "circle", -0.25, 0.0),
    "ffn": ("FFN block", "#2ca02c", "square", 0.0, 0.3),
    "layer_output": ("after FFN (layer output)", "#9467bd", "circle", 0.25, 0.0),
}
EMBEDDING_Y = -0.75  # where I{-1} would be: the grid's residual states stay 0.5 apart all the way down
EDGE_COLORS = {"attention": (31, 119, 180), "residual": (140, 140, 140), "ffn": (44, 160, 44)}
_BUCKETS = 5  # edge weight classes; plotly draws one width per trace, so edges are grouped by class
_PLOT_WIDTH = 1000  # pixels of plot area assumed for label thinning when no width is given (the app's page,
# a 1,400-pixel window less the logit-lens panel beside the graph)
_ROOT_COLOR = "#ff7f0e"
_BOTTOM = 160  # pixels under the plot: rotated token labels (about 80), the axis title, the legend


def _int(value) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _kind(node: dict) -> str:
    """A node's kind from its attributes, else from its name's letter (X0_t, A{l}_t, M{l}_t, I{l}_t)."""
    kind = str(node.get("kind", "")).lower()
    if kind in NODE_KINDS:
        return kind
    return {"X": "embedding", "A": "attention", "M": "ffn", "I": "layer_output"}.get(str(node["id"])[:1], "attention")


def _edge_kind(edge: dict) -> str:
    kind = str(edge.get("kind", "")).lower()
    return "attention" if kind.startswith("attention") else "ffn" if kind in ("ffn", "mlp") else "residual"


def node_place(node: dict) -> tuple[float, float] | None:
    """(x, y) of a route node on the grid; None when it names no position."""
    position = _int(node.get("position", node.get("pos")))
    if position is None:
        return None
    kind = _kind(node)
    _, _, _, dy, dx = NODE_KINDS[kind]
    layer = _int(node.get("layer"))
    y = EMBEDDING_Y if kind == "embedding" or layer is None else layer + dy
    return position + dx, y


def route_at(route: Graph, root: str, threshold: float) -> Graph:
    """The part of `route` that still explains `root` when only edges of weight >= threshold are kept: those
    edges, on paths that end in the root (an edge left hanging below a dropped one explains nothing)."""
    into: dict[str, list[dict]] = {}
    for edge in route.edges:
        if edge["weight"] >= threshold:
            into.setdefault(edge["target"], []).append(edge)
    reached, stack, kept = {root}, [root], []
    while stack:
        for edge in into.get(stack.pop(), ()):
            kept.append(edge)
            if edge["source"] not in reached:
                reached.add(edge["source"])
                stack.append(edge["source"])
    nodes = [node for node in route.nodes if node["id"] in reached]
    return Graph(nodes, kept, route.attrs)


def head_shares(edge: dict) -> list[tuple[int, float]]:
    """(head, share of the edge's attention part) of an attention edge, largest first."""
    parts = edge.get("heads")
    if not isinstance(parts, (list, tuple)) or not parts:
        head = _int(edge.get("head"))
        return [(head, 1.0)] if head is not None else []
    total = sum(max(float(v), 0.0) for v in parts)
    if total <= 0:
        return []
    return sorted(((h, max(float(v), 0.0) / total) for h, v in enumerate(parts) if v > 0), key=lambda s: -s[1])


def _node_heads(route: Graph) -> dict[str, int]:
    """For each (layer, position): the head carrying most attention into its after-attention node, so that a
    click on any node of that layer and token opens the head that fed it."""
    carried: dict[tuple[int, int], list[float]] = {}
    for edge in route.edges:
        parts = edge.get("heads")
        target = edge["target"]
        if _edge_kind(edge) != "attention" or not isinstance(parts, (list, tuple)) or not target.startswith("A"):
            continue
        layer, position = (int(x) for x in target[1:].split("_"))
        sums = carried.setdefault((layer, position), [0.0] * len(parts))
        for head, value in enumerate(parts[:len(sums)]):
            sums[head] += float(value)
    return {f"{layer},{position}": max(range(len(sums)), key=sums.__getitem__)
            for (layer, position), sums in carried.items()}


def _name(node: dict) -> str:
    kind = _kind(node)
    layer = _int(node.get("layer"))
    return {"embedding": "embedding", "attention": f"layer {layer}, after attention",
            "ffn": f"layer {layer}, FFN block output", "layer_output": f"layer {layer}, after FFN"}[kind]


def _node_hover(node: dict, texts: list[str], lens: dict | None, lens_note: str | None, weight_in: float,
                weight_out: float) -> str:
    position = _int(node.get("position", node.get("pos")))
    text = texts[position] if position is not None and 0 <= position < len(texts) else "?"
    lines = [f"<b>{html.escape(str(node['id']))}</b> · {_name(node)}",
             f"token {position} <b>{token_label(text, 60)}</b>",
             f"edges drawn: in {weight_in:.3f}, out {weight_out:.3f}"]
    top = (lens or {}).get(node["id"])
    if top:
        what = "promotes" if _kind(node) == "ffn" else "reads as"
        lines.append(f"{what} (final norm, unembedding): " + ", ".join(
            f"{token_label(token, 16)} {probability:.2f}" for token, probability in top))
    elif lens_note:
        lines.append(html.escape(lens_note))
    if _int(node.get("layer")) is not None and _kind(node) != "embedding":
        lines.append("click to open the head that fed it")
    return "<br>".join(lines)


def _edge_hover(edge: dict, shares: list[tuple[int, float]]) -> str:
    """shares: `head_shares(edge)` (computed once by the caller, which also needs the top head)."""
    source, target = html.escape(edge["source"]), html.escape(edge["target"])
    kind = _edge_kind(edge)
    lines = [f"<b>{source} → {target}</b> · {html.escape(str(edge.get('kind', kind)))}",
             f"contribution {edge['weight']:.3f}"]
    if kind == "attention":
        attention, residual = edge.get("attention"), edge.get("residual")
        if isinstance(residual, (int, float)) and residual > 0 and isinstance(attention, (int, float)):
            lines[-1] += f" = attention {attention:.3f} + residual {residual:.3f}"
        if shares:
            lines.append("heads: " + ", ".join(f"H{head} {100 * share:.0f}%" for head, share in shares[:4])
                         + (f" (+{len(shares) - 4} more)" if len(shares) > 4 else ""))
            lines.append("click to open the top head")
    return "<br>".join(lines)


def _x_ticks(texts: list[str], max_labels: int, root_position: int | None) -> dict:
    """Token labels thinned evenly to what fits, plus the root's own token (its neighbours give way)."""
    ticks = position_ticks(texts, 0, len(texts), max_labels=max_labels)
    if root_position is None or root_position in ticks["tickvals"]:
        return ticks
    step = math.ceil(len(texts) / max(1, max_labels))
    kept = [(v, t) for v, t in zip(ticks["tickvals"], ticks["ticktext"]) if abs(v - root_position) >= step]
    kept.append((root_position, position_ticks(texts, root_position, root_position + 1)["ticktext"][0]))
    kept.sort()
    return dict(tickmode="array", tickvals=[v for v, _ in kept], ticktext=[t for _, t in kept])


def _rgba(rgb: tuple[int, int, int], alpha: float) -> str:
    return f"rgba({rgb[0]},{rgb[1]},{rgb[2]},{alpha:.2f})"


def route_figure(route: Graph, *, texts: list[str], n_layers: int, root: str, threshold: float = 0.0,
                 lens: dict | None = None, lens_note: str | None = None, width: int | None = None,
                 height: int | None = None, title: str | None = None) -> go.Figure:
    """The route that explains node `root` (e.g. I{L-1}_p), edges of weight >= threshold only (`route_at`).

    texts: every token's text (x-axis labels, thinned to what fits; full text in hover). n_layers: the
    model's, so the y axis spans every layer (L0 ..). lens: {node id: [(token, probability), ...]}, the top
    tokens of each node's state under the final norm and unembedding (the logit lens), for hover; lens_note:
    what node hovers say instead (where the lens is, or why it is missing). width: the plot's pixels when
    known (label thinning)."""
    shown = route_at(route, root, threshold)
    if not shown.edges:
        return message_figure(f"No edge of contribution >= {threshold:g} reaches {root} "
                              f"({len(route.edges)} edges in the stored route).", title=title)
    n = len(texts)
    places = {node["id"]: node_place(node) for node in shown.nodes}
    edges = [e for e in shown.edges if places.get(e["source"]) and places.get(e["target"])]
    height = height or int(max(460, min(1500, 27 * (n_layers + 1) + 50 + _BOTTOM)))
    plot_width = (width - 90) if width else _PLOT_WIDTH
    px_position = plot_width / max(n, 1)
    px_level = (height - 50 - _BOTTOM) / (2 * (n_layers + 1))
    size = max(4.0, min(11.0, 0.7 * px_position, 1.4 * px_level))
    top = max(e["weight"] for e in edges) or 1.0
    heads = _node_heads(shown)
    by_id = {node["id"]: node for node in shown.nodes}

    # plain dicts, left unvalidated, and numpy coordinates (plotly copies lists element by element): plotly's per-value
    # checks and copies cost ~0.5 s at 7,000 edges
    traces: list[dict] = []
    for kind, rgb in EDGE_COLORS.items():
        mine = [e for e in edges if _edge_kind(e) == kind]
        for bucket in range(_BUCKETS):
            xs, ys = [], []
            for edge in mine:
                if min(_BUCKETS - 1, int(_BUCKETS * edge["weight"] / top)) != bucket:
                    continue
                (x0, y0), (x1, y1) = places[edge["source"]], places[edge["target"]]
                xs += [x0, x1, math.nan]  # NaN breaks the line: one trace draws many segments
                ys += [y0, y1, math.nan]
            if xs:
                strength = (bucket + 1) / _BUCKETS
                traces.append(dict(type="scatter", x=np.array(xs), y=np.array(ys), mode="lines", hoverinfo="skip",
                                   showlegend=False, line=dict(color=_rgba(rgb, 0.2 + 0.7 * strength),
                                                               width=0.6 + 4.4 * strength)))
        if mine:
            mids, custom, hovers = [], [], []
            for edge in mine:
                (x0, y0), (x1, y1) = places[edge["source"]], places[edge["target"]]
                mids.append(((x0 + x1) / 2, (y0 + y1) / 2))
                target = by_id[edge["target"]]
                shares = head_shares(edge) if kind == "attention" else []
                custom.append([_int(target.get("layer")), shares[0][0] if shares else None,
                               _int(target.get("position"))])
                hovers.append(_edge_hover(edge, shares))
            middle = np.array(mids)
            traces.append(dict(
                type="scatter", x=middle[:, 0], y=middle[:, 1], mode="markers", showlegend=False, meta="edges",
                name=f"{kind} edges", marker=dict(size=max(6.0, size), color=_rgba(rgb, 0.0)), customdata=custom,
                hovertext=hovers, hoverinfo="text"))

    weight_in: dict[str, float] = {}
    weight_out: dict[str, float] = {}
    for edge in edges:
        weight_in[edge["target"]] = weight_in.get(edge["target"], 0.0) + edge["weight"]
        weight_out[edge["source"]] = weight_out.get(edge["source"], 0.0) + edge["weight"]
    for kind, (name, color, symbol, _, _) in NODE_KINDS.items():
        mine = [node for node in shown.nodes if _kind(node) == kind and places[node["id"]] is not None]
        if not mine:
            continue
        custom = []
        for node in mine:
            layer, position = _int(node.get("layer")), _int(node.get("position"))
            layer = None if kind == "embedding" else layer
            custom.append([layer, heads.get(f"{layer},{position}", 0) if layer is not None else None, position,
                           node["id"]])
        traces.append(dict(
            type="scatter", x=np.array([places[node["id"]][0] for node in mine]),
            y=np.array([places[node["id"]][1] for node in mine]), mode="markers",
            name=f"{name}: {len(mine)}", meta="nodes", customdata=custom, hoverinfo="text",
            hovertext=[_node_hover(node, texts, lens, lens_note, weight_in.get(node["id"], 0.0),
                                   weight_out.get(node["id"], 0.0)) for node in mine],
            marker=dict(size=size, color=color, symbol=symbol,
                        line=dict(width=[2.5 if node["id"] == root else 0.5 for node in mine],
                                  color=[_ROOT_COLOR if node["id"] == root else "#fff" for node in mine]))))

    y_ticks = [EMBEDDING_Y] + list(range(n_layers))
    y_text = ["emb"] + [f"L{layer}" for layer in range(n_layers)]
    if 18 * (n_layers + 1) > height - 50 - _BOTTOM:  # thin layer labels to what fits (every 2nd, ... layer)
        step = math.ceil(18 * (n_layers + 1) / (height - 50 - _BOTTOM))
        y_ticks, y_text = y_ticks[:1] + y_ticks[1::step], y_text[:1] + y_text[1::step]
    heading = title or (f"route to {root}: {len(shown.nodes)} nodes, {len(edges)} edges of contribution >= {threshold:g}"
                        f" (of {len(route.edges)} stored)")
    layout = dict(
        title=heading, template="plotly_white", font=FONT, height=height, width=width, hovermode="closest",
        clickmode="event", margin=dict(l=60, r=20, t=50, b=_BOTTOM),
        # below the token labels and the axis title: above the plot it would sit under plotly's mode bar
        legend=dict(orientation="h", x=0, xanchor="left", y=-(_BOTTOM - 28) / (height - 50 - _BOTTOM), yanchor="top"),
        xaxis=dict(title="token", range=[-0.7, n - 0.3], zeroline=False, showgrid=False, tickangle=-90,
                   tickfont=dict(size=11), **_x_ticks(texts, labels_that_fit(plot_width), _int(by_id[root].get(
                       "position")) if root in by_id else None)),
        yaxis=dict(title="layer", tickmode="array", tickvals=y_ticks, ticktext=y_text, zeroline=False,
                   range=[EMBEDDING_Y - 0.45, n_layers - 0.5], showgrid=True, gridcolor="#eef0f3"),
    )
    # the layout (small) is validated as usual; the traces, built above from checked numbers, are not
    return go.Figure(data=traces, layout=go.Layout(layout), _validate=False)
