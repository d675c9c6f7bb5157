"""Information-flow routes (Ferrando & Voita 2024, "Information Flow Routes: Automatically Interpreting
Language Models at Scale"; reference: facebookresearch/llm-transparency-tool, routes/contributions.py, graph.py).

For a prediction at query row p, the attribution graph has a node per token representation (X0_t
embedding, A{l}_t after attention, M{l}_t the FFN, I{l}_t after layer l). The attention block's output at
row i splits into parts x_ijh = A_ij^h * v_j^h W_O^h (one per key j and head h, plus b_O / H when the bias
is shared) beside the residual; the FFN node splits into FFN output and residual. A part contributes
max(||y||_1 - ||y - x||_1, 1e-5), normalised over the parts of its whole y. The route is the subgraph reached
backwards from I{L-1}_p through edges above the threshold (with `renormalise`, the reference app's default:
parts at or below the threshold are zeroed, the rest renormalised, and every edge left is kept).

Conventions (docs/analyses/routes.md, 'Matching the paper'): attention edges sum the per-head parts of a key, and the
self-attention edge of a token is merged with its residual edge, as the reference graph does. Parts are the
keys a row can see; the reference also floors every masked (key, head) slot at 1e-5 in the normaliser
(`reference_padding=True` reproduces it). `bias="share"` (default) puts b_O into the parts so they sum exactly
to the block output; `bias="exclude"` leaves it out like the reference code (no difference for Llama-family
models, which have no b_O).

Memory: the [n, n, H, d_model] tensor is never built. Contributions are computed lazily, only for nodes the
walk reaches, in chunks of `chunk` query rows; the working set per layer is the value-output table
[H, n, d_model] plus O(H * chunk * n) for attention rows and contributions, plus [H, n, 64] and a
[4096, d_model] block for the exact distances of heavy parts (see contributions.py for the exact pruning).
Needs a trace captured with `decomposition=True`; reads the model's weights from the bundle only.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import ClassVar, Literal

import networkx as nx
import numpy as np

from workbench.analyses.decomposed import check_trace
from workbench.analyses.result import HeadMetric, Result, stored_version
from workbench.analyses.routes._graph import Explorer, route_of
from workbench.analyses.routes.layers import Bias
from workbench.analyses.routes.heads import HeadPatterns, head_patterns, head_usage
from workbench.errors import InputError
from workbench.traces.metrics import predicted_position, predicting_row

__all__ = ["HeadPatterns", "Route", "RoutesResult", "analyse", "head_patterns", "resolve_positions"]

METHOD = "Ferrando & Voita 2024, information-flow routes (L1 proximity contributions)"


@dataclass(frozen=True)
class Route:
    """The route rooted at query row `position` (the representation of the token there), which explains that
    row's prediction: the token at predicted_position(position), described by `predicted` when the trace has it."""

    position: int
    output: str  # the route's root node, I{L-1}_position
    graph: nx.DiGraph = field(compare=False)
    predicted: dict | None = None

    def to_json(self) -> dict:
        # position is the root's token position; the same row is stored as predicting_row, the predicted token's
        # position under predicted.position, so no reader has to know which of the two a position means
        return {"position": self.position, "predicting_row": self.position, "output": self.output,
                "predicted": self.predicted, "graph": nx.node_link_data(self.graph, edges="edges")}

    @classmethod
    def from_json(cls, data: dict) -> Route:
        graph = data["graph"]
        edges = "edges" if "edges" in graph or "links" not in graph else "links"
        return cls(position=int(data.get("predicting_row", data["position"])), output=str(data.get("output", "")),
                   graph=nx.node_link_graph(graph, directed=True, multigraph=False, edges=edges),
                   predicted=data.get("predicted"))


@dataclass(frozen=True)
class RoutesResult(Result):
    """Routes for one or more predictions, head usage across them, typed heads and work statistics."""

    analysis: ClassVar[str] = "routes"
    schema_version: ClassVar[int] = 1

    model: str
    options: dict
    routes: tuple[Route, ...]
    head_usage: dict
    head_patterns: HeadPatterns | None
    stats: dict

    def route(self, position: int) -> Route:
        for route in self.routes:
            if route.position == position:
                return route
        raise KeyError(f"no route for position {position}; have {[r.position for r in self.routes]}")

    def to_json(self) -> dict:
        return {"analysis": self.analysis, "schema_version": self.schema_version, "method": METHOD,
                "model": self.model, "options": self.options,
                "routes": [route.to_json() for route in self.routes], "heads": {
                    "usage": self.head_usage,
                    "patterns": self.head_patterns.to_json() if self.head_patterns is not None else None},
                "stats": self.stats}

    @classmethod
    def from_json(cls, data: dict) -> RoutesResult:
        stored_version(data, cls)
        heads = data.get("heads") or {}
        patterns = heads.get("patterns")
        return cls(model=str(data.get("model", "?")), options=dict(data.get("options") or {}),
                   routes=tuple(Route.from_json(item) for item in data["routes"]),
                   head_usage=dict(heads.get("usage") or {}),
                   head_patterns=HeadPatterns.from_json(patterns) if patterns is not None else None,
                   stats=dict(data.get("stats") or {}))

    def head_metrics(self) -> dict[str, HeadMetric]:
        """Route frequency and contribution per head (Ferrando & Voita 2024) and the typed-head pattern scores."""
        out = {}
        n_routes = len(self.routes) or 1
        if self.head_usage.get("routes") is not None:
            out["route_frequency"] = HeadMetric(
                np.asarray(self.head_usage["routes"], dtype=np.float64) / n_routes, "route frequency",
                f"share of the {n_routes} stored routes with an edge this head carries above the threshold "
                "(Ferrando & Voita 2024)", zmin=0, zmax=1)
        if self.head_usage.get("weight") is not None:
            out["route_weight"] = HeadMetric(np.asarray(self.head_usage["weight"], dtype=np.float64),
                                             "route contribution",
                                             "summed contribution of the head's parts on route edges")
        for kind, table in (self.head_patterns.scores.items() if self.head_patterns is not None else ()):
            if table is not None:
                out[f"pattern_{kind}"] = HeadMetric(
                    np.asarray(table, dtype=np.float64), f"{kind.replace('_', '-')} score",
                    f"{kind.replace('_', ' ')} pattern score (typed heads of the routes analysis)", zmin=0, zmax=1)
        return out


def resolve_positions(trace, position) -> list[int]:
    """"last" (the row that predicted the trace's last token: the last generated token, or the last prompt
    token without a generation), int (negative counts from the end; -1 is the last row, whose prediction lies
    past the trace), a sequence of ints, "generated" (rows that predicted generated tokens) or "all" ->
    sorted absolute query rows."""
    n = len(trace.tokens)
    if position == "last":  # a one-token trace has no predicted token: its only row is all there is
        return [predicting_row(n - 1) if n > 1 else 0]
    if position == "all":
        return list(range(n))
    if position == "generated":
        start, end = trace.generation["start"], trace.generation["end"]
        if end <= start:
            raise InputError("this trace generated no tokens; pass --position last or explicit positions")
        return [predicting_row(token) for token in range(start, end)]
    items = [position] if isinstance(position, int) else list(position)
    resolved = []
    for item in items:
        if not isinstance(item, int) or not -n <= item < n:
            raise InputError(f"position {item!r} is outside the trace's {n} tokens (use 0..{n - 1} or -1 for the last)")
        resolved.append(item % n)
    return sorted(set(resolved))


def _predicted(trace, row: int) -> dict | None:
    """The token that query row `row` predicts (its position, id, text, log-probability), if the trace has it."""
    position = predicted_position(row)
    if position >= len(trace.tokens):
        return None
    token = trace.tokens[position]
    entry = {"position": position, "id": token.id, "text": token.text}
    if trace.has("outputs.next_token_logprob"):
        value = float(trace.tensor("outputs.next_token_logprob")[row])  # [query_pos]: log p of the next token
        entry["logprob"] = None if math.isnan(value) else round(value, 6)
    return entry


def _label(graph: nx.DiGraph, tokens) -> None:
    for _, data in graph.nodes(data=True):
        token = tokens[data["position"]]
        data["token"], data["region"] = token.text, token.region


def analyse(trace, *, position: int | Sequence[int] | Literal["last", "generated", "all"] = "last",
            threshold: float = 0.04, renormalise: bool = True, bias: Bias = "share",
            reference_padding: bool = False,
            head_types: bool = True, type_threshold: float = 0.4, chunk: int = 32) -> RoutesResult:
    """Information-flow routes of the predictions at `position` (see the module docstring; the default
    "last" explains the trace's last token, a prediction the trace holds).

    threshold: the contribution threshold tau (reference app default 0.04). renormalise: zero parts <= tau
    and renormalise (the reference app's default) instead of cutting raw edges at tau. head_types: also score
    previous-token / induction / subword-merging patterns of every head (one extra pass over all rows).
    chunk: query rows per block (bounds the working set).

    >>> import workbench
    >>> t = workbench.trace("planted-induction", "f x r c e l f x r c e l", raw=True, decomposition=True)
    >>> result = analyse(t, position=-1)
    >>> result.head_patterns.types()          # the planted heads, typed from their attention rows
    {(0, 3): ('previous_token',), (1, 2): ('induction',)}
    >>> result.routes[0].output, result.routes[0].graph.has_node("X0_12")   # root, and the token's embedding
    ('I1_12', True)
    """
    check_trace(trace, "routes")
    if not 0 <= threshold < 1:
        raise InputError(f"--threshold must be in [0, 1), got {threshold}")
    if bias not in ("share", "exclude"):
        raise InputError(f"bias must be 'share' or 'exclude', got {bias!r}")
    if chunk < 1:
        raise InputError("chunk must be at least 1")
    positions = resolve_positions(trace, position)
    explorer = Explorer(trace, threshold=threshold, renormalise=renormalise, bias=bias,
                        reference_padding=reference_padding, chunk=chunk)
    explored = explorer.run(positions)
    _label(explored, trace.tokens)
    last = trace.n_layers() - 1
    routes = tuple(Route(p, f"I{last}_{p}", route_of(explored, f"I{last}_{p}"), _predicted(trace, p))
                   for p in positions)
    n_heads = trace.n_heads()
    usage = head_usage([route.graph for route in routes], trace.n_layers(), n_heads, threshold)
    patterns = head_patterns(trace, type_threshold=type_threshold) if head_types else None
    options = {"position": positions, "threshold": threshold, "renormalise": renormalise, "bias": bias,
               "reference_padding": reference_padding, "chunk": chunk, "type_threshold": type_threshold}
    stats = {"attention_rows_computed": explorer.attention_rows, "max_rebuild_error": explorer.max_rebuild_error,
             **explorer.work.to_json(), "explored_nodes": explored.number_of_nodes(),
             "explored_edges": explored.number_of_edges()}
    return RoutesResult(model=trace.model.get("name", "?"), options=options, routes=routes, head_usage=usage,
                        head_patterns=patterns, stats=stats)
