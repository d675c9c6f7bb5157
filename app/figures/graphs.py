"""Graph builders for dash-cytoscape: information-flow routes and the SVD head-to-head circuit graph.

They return plain element lists (and a stylesheet), so notebooks can hand them to networkx or cytoscape.
Nodes and edges carry `layer`/`head` when they belong to one, which the pages turn into head-view links.
"""

from __future__ import annotations

from workbench.app.data.results import Graph
from workbench.app.figures.common import token_text

KIND_LEVEL = {"embed": 0, "embedding": 0, "input": 0, "attn": 1, "attention": 1, "ffn": 2, "mlp": 2,
              "layer_output": 3, "output": 3, "resid": 3}
KIND_COLOR = {0: "#7f7f7f", 1: "#1f77b4", 2: "#2ca02c", 3: "#9467bd"}
KIND_PREFIX = {0: "emb", 1: "a", 2: "f", 3: "out"}

STYLESHEET = [
    {"selector": "node", "style": {"label": "data(label)", "font-size": 9, "width": 14, "height": 14,
                                   "background-color": "data(color)", "text-valign": "top", "color": "#333"}},
    {"selector": "node.target", "style": {"border-width": 3, "border-color": "#ff7f0e"}},
    {"selector": "edge", "style": {"width": "data(width)", "line-color": "data(color)", "opacity": 0.7,
                                   "curve-style": "bezier", "target-arrow-shape": "triangle",
                                   "target-arrow-color": "data(color)", "arrow-scale": 0.6}},
    {"selector": ":selected", "style": {"border-width": 3, "border-color": "#d62728", "line-color": "#d62728"}},
]


def _int(value):
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def route_elements(route: Graph, *, texts: list[str], target: int | None = None, max_edges: int = 600) -> list[dict]:
    """Cytoscape elements of one route, laid out as a grid: x = token position, y = depth (embedding at the
    bottom, then attention, FFN and layer output of each layer). The route's root (no outgoing edge, at
    `target`) is outlined. Edges keep their weight (width) and the head carrying most of them (link)."""
    elements: list[dict] = []
    unplaced = 0
    sources = {edge["source"] for edge in route.edges}
    for node in route.nodes:
        layer, pos = _int(node.get("layer")), _int(node.get("pos", node.get("position", node.get("token"))))
        kind = str(node.get("kind", node.get("type", "attn"))).lower()
        level = KIND_LEVEL.get(kind, 1)
        depth = 0 if level == 0 else 3 * (layer or 0) + level
        if pos is None:
            unplaced += 1
            x, y = -120, 60 * unplaced
        else:
            x, y = 70 * pos, -55 * depth
        label = f"{KIND_PREFIX[level]}{'' if level == 0 else layer} "
        label += token_text(texts[pos], 8) if pos is not None and 0 <= pos < len(texts) else ""
        data = {"id": node["id"], "label": label,
                "color": KIND_COLOR[level], "layer": layer, "pos": pos, "kind": kind}
        classes = "target" if node["id"] not in sources and (target is None or pos == target) else ""
        elements.append({"data": data, "position": {"x": x, "y": y}, "classes": classes})
    edges = sorted(route.edges, key=lambda e: -abs(e["weight"]))[:max_edges]
    top = max((abs(e["weight"]) for e in edges), default=1.0) or 1.0
    for index, edge in enumerate(edges):
        head = _int(edge.get("head"))
        parts = edge.get("heads")
        if head is None and isinstance(parts, (list, tuple)) and parts and \
                all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in parts):
            head = max(range(len(parts)), key=lambda h: parts[h])  # the head carrying most of the edge
        kind = str(edge.get("kind", "attn" if head is not None else "residual")).lower()
        color = "#1f77b4" if kind.startswith(("attn", "attention")) else (
            "#2ca02c" if kind in ("ffn", "mlp") else "#aaaaaa")
        elements.append({"data": {"id": f"e{index}", "source": edge["source"], "target": edge["target"],
                                  "weight": edge["weight"], "head": head, "kind": kind, "color": color,
                                  "width": 0.5 + 5 * abs(edge["weight"]) / top}})
    return elements


def circuit_elements(circuit: Graph, *, max_edges: int = 800) -> list[dict]:
    """Cytoscape elements of a head-to-head graph: node (layer, head) at x = head, y = layer (downstream lower)."""
    elements: list[dict] = []
    for node in circuit.nodes:
        layer, head = _int(node.get("layer")), _int(node.get("head"))
        label = str(node.get("label", f"L{layer}H{head}" if layer is not None and head is not None else node["id"]))
        data = {"id": node["id"], "label": label, "layer": layer, "head": head,
                "color": "#9467bd" if node.get("role") else "#1f77b4"}
        position = {"x": 80 * (head if head is not None else -1), "y": 80 * (layer if layer is not None else -1)}
        elements.append({"data": data, "position": position})
    edges = sorted(circuit.edges, key=lambda e: -abs(e["weight"]))[:max_edges]
    top = max((abs(e["weight"]) for e in edges), default=1.0) or 1.0
    for index, edge in enumerate(edges):
        side = str(edge.get("sides", edge.get("side", edge.get("through", "")))).lower()
        color = {"query": "#ff7f0e", "q": "#ff7f0e", "key": "#2ca02c", "k": "#2ca02c", "qk": "#9467bd"}.get(side, "#7f7f7f")
        elements.append({"data": {"id": f"c{index}", "source": edge["source"], "target": edge["target"],
                                  "weight": edge["weight"], "side": side or "?", "color": color,
                                  "width": 0.5 + 5 * abs(edge["weight"]) / top}})
    return elements


def strongest_head(elements: list[dict], node_id: str) -> int | None:
    """The head of the heaviest attention edge into a node (for linking a route node to the head view)."""
    best, best_weight = None, -1.0
    for element in elements:
        data = element["data"]
        if data.get("target") == node_id and data.get("head") is not None and abs(data["weight"]) > best_weight:
            best, best_weight = data["head"], abs(data["weight"])
    return best
