"""Graph builders for dash-cytoscape: the SVD head-to-head circuit graph as plain element lists (and a
stylesheet), so notebooks can hand them to networkx or cytoscape. Nodes carry `layer`/`head`. (The route graph
is a plotly figure: app.figures.routes.)
"""

from __future__ import annotations

from workbench.app.data.results import Graph

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
