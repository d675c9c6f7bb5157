"""The backward walk that builds route graphs, computing contributions only for the nodes it reaches.

Node names follow the reference tool: X0_t (embedding of token t), A{l}_t (residual after attention of
layer l), M{l}_t (the FFN block), I{l}_t (residual after layer l). Edges point from source to target, in
the direction information flows; the walk goes against them, from I{L-1}_p.
"""

from __future__ import annotations

import networkx as nx
import torch

from workbench.analyses.routes.contributions import EPS, WorkCounter, attention_parts, proximity
from workbench.analyses.routes.layers import Bias, LayerInputs


def _renormalised(parts: torch.Tensor, residual: torch.Tensor, threshold: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Zero the contributions at or below the threshold and renormalise the rest of each whole (the reference's
    apply_threshold_and_renormalize). parts [row] (FFN) or [head, row, key_pos] (attention); residual [row]."""
    parts = parts * (parts > threshold)
    residual = residual * (residual > threshold)
    total = (parts if parts.dim() == 1 else parts.sum((0, 2))) + residual
    total = torch.where(total > 0, total, torch.ones_like(total))  # nothing kept: no edges at all
    return (parts / total if parts.dim() == 1 else parts / total[None, :, None]), residual / total


def _source(layer: int, position: int) -> str:
    return f"I{layer - 1}_{position}" if layer > 0 else f"X0_{position}"


def _node(graph: nx.DiGraph, name: str) -> None:
    if name not in graph:
        kind = {"X": "embedding", "A": "attention", "M": "ffn", "I": "layer_output"}[name[0]]
        layer, position = name[1:].split("_")
        graph.add_node(name, kind=kind, layer=int(layer) if kind != "embedding" else -1, position=int(position))


def _edge(graph: nx.DiGraph, source: str, target: str, weight: float, **attributes) -> None:
    _node(graph, source)
    _node(graph, target)
    graph.add_edge(source, target, weight=weight, **attributes)


class Explorer:
    """Walks back from the output nodes of `starts`; `graph` holds every kept edge of every reached node."""

    def __init__(self, trace, *, threshold: float, renormalise: bool, bias: Bias, reference_padding: bool,
                 chunk: int):
        self.trace = trace
        self.threshold = threshold
        self.renormalise = renormalise
        self.cut = 0.0 if renormalise else threshold  # edges kept by the walk have weight > cut
        self.bias = bias
        self.reference_padding = reference_padding
        self.chunk = chunk
        self.graph = nx.DiGraph()
        self.work = WorkCounter()
        self.max_rebuild_error = 0.0
        self.attention_rows = 0

    def run(self, starts: list[int]) -> nx.DiGraph:
        n_layers = self.trace.n_layers()
        reached = set(starts)
        for layer in range(n_layers - 1, -1, -1):
            if not reached:
                break
            inputs = LayerInputs(self.trace, layer, bias=self.bias)
            attention_reached = self._ffn(inputs, sorted(reached))
            reached = self._attention(inputs, sorted(attention_reached)) if attention_reached else set()
        return self.graph

    def _ffn(self, inputs: LayerInputs, positions: list[int]) -> set[int]:
        index = torch.tensor(positions)
        mid, out = inputs.mid[index], inputs.hidden_out[index]
        raw_ffn, raw_residual = proximity(out - mid, out), proximity(mid, out)
        total = raw_ffn + raw_residual
        ffn, residual = raw_ffn / total, raw_residual / total
        if self.renormalise:
            ffn, residual = _renormalised(ffn, residual, self.threshold)
        layer, reached = inputs.layer, set()
        for row, position in enumerate(positions):
            target, block, after_attention = f"I{layer}_{position}", f"M{layer}_{position}", f"A{layer}_{position}"
            _node(self.graph, target)
            if float(ffn[row]) > self.cut:
                _edge(self.graph, block, target, float(ffn[row]), kind="ffn")
                _edge(self.graph, after_attention, block, float(ffn[row]), kind="ffn")
                reached.add(position)
            if float(residual[row]) > self.cut:
                _edge(self.graph, after_attention, target, float(residual[row]), kind="residual")
                reached.add(position)
        return reached

    def _attention(self, inputs: LayerInputs, positions: list[int]) -> set[int]:
        layer, reached = inputs.layer, set()
        n = inputs.query.shape[1]
        for start in range(0, len(positions), self.chunk):
            rows = torch.tensor(positions[start:start + self.chunk])
            attention = inputs.rows(rows)  # [head, row, key_pos]
            self.attention_rows += len(rows)
            self.max_rebuild_error = max(self.max_rebuild_error, inputs.check_rebuild(rows, attention))
            whole, residual_part = inputs.mid[rows], inputs.hidden_in[rows]
            visible = rows + 1
            raw = attention_parts(whole, attention, inputs.value_out, inputs.value_out_max, visible, self.work)
            raw_residual = proximity(residual_part, whole)
            total = raw.sum((0, 2)) + raw_residual
            if self.reference_padding:  # the reference also gives EPS to every masked (key, head) slot
                total = total + EPS * inputs.heads * (n - visible).to(total.dtype)
            parts, residual = raw / total[None, :, None], raw_residual / total
            if self.renormalise:
                parts, residual = _renormalised(parts, residual, self.threshold)
            weights = parts.sum(0)  # [row, key_pos]: summed over heads, as the reference graph does
            weights[torch.arange(len(rows)), rows] += residual
            for row, position in enumerate(rows.tolist()):
                target = f"A{layer}_{position}"
                for key in (weights[row] > self.cut).nonzero().flatten().tolist():
                    is_self = key == position
                    _edge(self.graph, _source(layer, key), target, float(weights[row, key]),
                          kind="attention+residual" if is_self else "attention",
                          attention=float(parts[:, row, key].sum()),
                          residual=float(residual[row]) if is_self else 0.0,
                          heads=tuple(round(float(value), 7) for value in parts[:, row, key]))
                    if layer > 0:
                        reached.add(key)
        return reached


def route_of(explored: nx.DiGraph, output: str) -> nx.DiGraph:
    """The subgraph of `explored` reached backwards from `output` (edges kept as they are)."""
    if output not in explored:
        graph = nx.DiGraph()
        graph.add_node(output)
        return graph
    edges = list(nx.edge_dfs(explored, source=output, orientation="reverse"))
    route = explored.edge_subgraph([(u, v) for u, v, _ in edges]).copy()
    if output not in route:
        route.add_node(output, **explored.nodes[output])
    return route
