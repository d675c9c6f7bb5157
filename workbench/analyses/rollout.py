"""Attention rollout and attention flow: how much each input token contributes to one position's output.

Abnar & Zuidema 2020, "Quantifying Attention Flow in Transformers" (released code: samiraabnar/attention_flow).
Both start from the residual-augmented attention of each layer, A~_l = (mean over heads of A_l + I) with every row
renormalised to sum 1 (0.5 A + 0.5 I when A's rows sum to 1), as the released code builds it.

- rollout: the relevance of input token k for position p is row p of A~_{L-1} ... A~_1 A~_0, entry k. The result
  also holds that row after every layer l (row p of A~_l ... A~_0), the per-layer rollout.
- flow: the layered graph has a node (l, i) for every layer boundary l = 0..L and position i, and an edge
  (l + 1, i) -> (l, j) with capacity A~_l[i, j]. The flow of token k is the maximum flow from (L, p) to (0, k);
  as in the released code the values are then divided by their sum (normalise=False keeps the raw flows). One
  max-flow per input token on a graph of L x n^2 edges: bounded by `max_flow_tokens` positions.

For a causal stack only positions 0..p enter (a row never sees a later key). For a VLM the relevance of the image
tokens is also laid out on the patch grid (`patch_grid`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import ClassVar, Literal

import numpy as np
import torch

from workbench.analyses.layer_maps import is_causal, layer_maps, n_positions, stores_all_maps
from workbench.analyses.result import Result, TokenValues, stored_version
from workbench.errors import InputError
from workbench.traces.tiles import tile_grid, whole_image_tile

__all__ = ["MAX_FLOW_TOKENS", "RolloutResult", "analyse", "flow_positions", "residual_attention", "rollout_rows"]

METHOD = "Abnar & Zuidema 2020 (attention rollout and attention flow; released code samiraabnar/attention_flow)"
MAX_FLOW_TOKENS = 64
"""Default bound on the positions of the flow graph: one max-flow per input token on L x n^2 edges, in Python."""


@dataclass(frozen=True)
class RolloutResult(Result):
    """What `analyse` found. relevance [key_pos] (float64); per_layer [layer, key_pos] (rollout only, else None);
    patch_grid [row, col] of the image tokens' relevance (VLM bundles, NaN where no image token sits)."""

    analysis: ClassVar[str] = "rollout"
    schema_version: ClassVar[int] = 1

    model: str
    stack: str
    method: str
    position: int
    options: dict
    relevance: np.ndarray = field(compare=False, repr=False)
    per_layer: np.ndarray | None = field(compare=False, repr=False)
    patch_grid: np.ndarray | None = field(compare=False, repr=False)
    tokens: tuple = ()
    maps: str = "stored"
    notes: tuple = ()

    def to_json(self) -> dict:
        def listed(values):
            return None if values is None else np.where(np.isfinite(values), np.round(values, 8), np.nan).tolist()

        return {"analysis": self.analysis, "schema_version": self.schema_version, "method": METHOD,
                "model": self.model, "stack": self.stack, "kind": self.method, "position": self.position,
                "options": self.options, "maps": self.maps, "relevance": listed(self.relevance),
                "per_layer": listed(self.per_layer),
                "patch_grid": None if self.patch_grid is None else
                [[None if not np.isfinite(v) else round(float(v), 8) for v in row] for row in self.patch_grid],
                "tokens": list(self.tokens), "notes": list(self.notes)}

    @classmethod
    def from_json(cls, data: dict) -> RolloutResult:
        stored_version(data, cls)
        grid = data.get("patch_grid")
        per_layer = data.get("per_layer")
        return cls(model=str(data.get("model", "?")), stack=str(data.get("stack", "text")),
                   method=str(data.get("kind", "rollout")), position=int(data["position"]),
                   options=dict(data.get("options") or {}),
                   relevance=np.asarray(data["relevance"], dtype=np.float64),
                   per_layer=None if per_layer is None else np.asarray(per_layer, dtype=np.float64),
                   patch_grid=None if grid is None else np.asarray(
                       [[np.nan if v is None else v for v in row] for row in grid], dtype=np.float64),
                   tokens=tuple(data.get("tokens") or ()), maps=str(data.get("maps", "stored")),
                   notes=tuple(data.get("notes") or ()))

    def token_values(self) -> dict[str, TokenValues]:
        """The relevance of every input token for the chosen position."""
        positions = np.arange(len(self.relevance), dtype=np.int64)
        return {self.method: TokenValues(positions, self.relevance, f"{self.method} relevance for position "
                                         f"{self.position}", f"Abnar & Zuidema 2020 attention {self.method} of "
                                         f"position {self.position} (rollout analysis)")}


def residual_attention(maps: torch.Tensor, *, residual: bool = True) -> torch.Tensor:
    """A~ [query_pos, key_pos] (float64) of one layer's maps [head, query_pos, key_pos]: the mean over heads, plus
    the identity with rows renormalised when `residual` (the released code's aug_att_mat)."""
    mean = maps.double().mean(0)
    if not residual:
        return mean
    mean = mean + torch.eye(mean.shape[0], dtype=torch.float64)
    return mean / mean.sum(-1, keepdim=True)


def rollout_rows(augmented: list[torch.Tensor], position: int) -> torch.Tensor:
    """[layer, key_pos] row `position` of A~_l ... A~_0 for every layer l (float64): the per-layer rollout; its
    last row is the rollout through the whole model. One chain of vector-matrix products per layer, O(L^2 n^2)
    instead of the O(L n^3) of the full matrix products."""
    n = augmented[0].shape[0]
    out = torch.zeros(len(augmented), n, dtype=torch.float64)
    for top in range(len(augmented)):
        row = torch.zeros(n, dtype=torch.float64)
        row[position] = 1.0
        for layer in range(top, -1, -1):
            row = row @ augmented[layer]
        out[top] = row
    return out


def flow_positions(trace, position: int, stack: str = "text") -> int:
    """How many positions the flow graph of `position` holds: 0..position in a causal stack, all otherwise."""
    return position + 1 if is_causal(trace, stack) else n_positions(trace, stack)


def flow_values(augmented: list[torch.Tensor], position: int,
                progress: Callable[[int, int], None] | None = None) -> np.ndarray:
    """[key_pos] raw maximum flow from (L, position) to every (0, k) of the layered graph (module docstring)."""
    import networkx as nx

    graph = nx.DiGraph()
    for layer, matrix in enumerate(augmented):
        rows, cols = torch.nonzero(matrix > 0, as_tuple=True)
        weights = matrix[rows, cols].tolist()
        graph.add_edges_from(((layer + 1, i), (layer, j), {"capacity": w})
                             for i, j, w in zip(rows.tolist(), cols.tolist(), weights))
    source, n = (len(augmented), position), augmented[0].shape[0]
    values = np.zeros(n)
    for k in range(n):
        if graph.has_node((0, k)) and graph.has_node(source):
            values[k] = nx.maximum_flow_value(graph, source, (0, k))
        if progress:
            progress(k + 1, n)
    return values


def analyse(trace, *, position: int, method: Literal["rollout", "flow"] = "rollout", residual: bool = True,
            normalise: bool = True, stack: Literal["text", "vision"] = "text", tracer=None,
            max_flow_tokens: int = MAX_FLOW_TOKENS, progress: Callable[[str, int, int], None] | None = None
            ) -> RolloutResult:
    """Rollout or flow relevance of every input token for `position` (negative counts from the end).

    tracer: a `workbench.capture.Tracer` of the bundle's model, needed only when the bundle does not store the
    maps of every layer and head. progress(stage, done, total): stage "maps" per layer, "flow" per input token.

    >>> import workbench
    >>> trace = workbench.trace("tiny-gpt2", "The cat sat on the mat", raw=True, maps="all:all")
    >>> result = analyse(trace, position=-1)
    >>> round(float(result.relevance.sum()), 6), result.per_layer.shape == (3, len(trace.tokens))
    (1.0, True)
    """
    if stack not in trace.stacks:
        raise InputError(f"the trace has no {stack!r} stack; it has {', '.join(trace.stacks)}")
    if method not in ("rollout", "flow"):
        raise InputError(f"method takes 'rollout' or 'flow', not {method!r}")
    n = n_positions(trace, stack)
    if not -n <= position < n:
        raise InputError(f"position {position} is outside the bundle's {n} positions (0..{n - 1}, or -1 for the last)")
    position %= n
    size = flow_positions(trace, position, stack)
    if method == "flow" and size > max_flow_tokens:
        raise InputError(f"attention flow over {size} positions exceeds the bound of {max_flow_tokens} "
                         f"(one max-flow per token on {trace.n_layers(stack)} x {size}^2 edges): use the rollout "
                         "method, an earlier position, or raise max_flow_tokens (--max-flow-tokens)")
    source = "stored" if stores_all_maps(trace, stack) else "recomputed"
    augmented = []
    for layer, maps in layer_maps(trace, stack=stack, upto=size, tracer=tracer,
                                  progress=(lambda d, t: progress("maps", d, t)) if progress else None):
        augmented.append(residual_attention(maps, residual=residual))
    per_layer = None
    if method == "rollout":
        per_layer = rollout_rows(augmented, position)
        relevance = per_layer[-1].numpy()
        per_layer = per_layer.numpy()
    else:
        relevance = flow_values(augmented, position, (lambda d, t: progress("flow", d, t)) if progress else None)
        if normalise and relevance.sum() > 0:
            relevance = relevance / relevance.sum()
    relevance = np.pad(relevance, (0, n - len(relevance)))  # later positions of a causal stack get nothing
    if per_layer is not None:
        per_layer = np.pad(per_layer, ((0, 0), (0, n - per_layer.shape[1])))
    notes = []
    if source == "stored" and trace.tensor(f"{'' if stack == 'text' else stack + '.'}layer_00.maps").dtype \
            == torch.float16:
        notes.append("maps stored as float16: relevance is accurate to about 1e-3")
    options = {"residual": residual, "normalise": normalise if method == "flow" else None,
               "head_reduction": "mean", "positions": size, "max_flow_tokens": max_flow_tokens}
    return RolloutResult(model=trace.model.get("name", "?"), stack=stack, method=method, position=position,
                         options=options, relevance=relevance, per_layer=per_layer,
                         patch_grid=patch_grid(trace, relevance) if stack == "text" else None,
                         tokens=tuple(_top_tokens(trace, relevance, stack)), maps=source, notes=tuple(notes))


def patch_grid(trace, relevance: np.ndarray) -> np.ndarray | None:
    """[row, col] relevance of the image tokens laid out by their patch (token.patch), NaN where no image token
    sits; for a tiled family, of the tile that shows the whole image (tiles share (row, col) ranges); None for a
    bundle without image tokens."""
    positions = tile_grid(trace.tokens, whole_image_tile(trace.tokens, trace.model.get("architecture")))
    if not positions.size:
        return None
    grid = np.full(positions.shape, np.nan)
    grid[positions >= 0] = np.asarray(relevance, dtype=np.float64)[positions[positions >= 0]]
    return grid


def _top_tokens(trace, relevance: np.ndarray, stack: str, count: int = 10) -> list[dict]:
    order = np.argsort(-relevance, kind="stable")[:count]
    out = []
    for k in order.tolist():
        entry = {"position": k, "relevance": round(float(relevance[k]), 8)}
        if stack == "text":
            token = trace.tokens[k]
            entry.update(text=token.text, region=token.region)
        else:  # a vision tower: [CLS], then the patches in order
            entry.update(text="[CLS]" if k == 0 else f"patch {k - 1}", region="special" if k == 0 else "image")
        out.append(entry)
    return out
