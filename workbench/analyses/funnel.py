"""PyramidKV's funnel: does attention narrow with depth?

Cai et al. 2024, "PyramidKV: Dynamic KV Cache Compression based on Pyramidal Information Funneling" (released code
Zefan-Cai/KVCache-Factory): attention is spread widely over the input in lower layers and concentrates on a few
tokens in higher layers, which is why PyramidKV gives lower layers a larger KV cache. The paper shows the pattern in
attention maps; it defines no score. Here, per layer of one traced input (means over heads and over every query
row that sees a key):

- entropy: mean row entropy, nats (stored O(n) statistics, every bundle);
- normalised_entropy: mean of row entropy / log(keys the row sees) (`traces.metrics.normalised_entropy`);
- mass_share: mean over rows of the share of the row's visible keys that hold `mass` (0.9) of its attention, the
  fewest keys taken in order of weight. It needs full maps (stored, or recomputed through a tracer); the O(n)
  statistics do not determine it (top-k weights bound it only when the top k already hold `mass`), so long
  contexts report it only when their maps were stored.

funnel score: Spearman's rank correlation between layer index and the chosen spread (`score_on`, entropy by
default): -1 = spread falls with every layer (a funnel), +1 = it rises, near 0 = no trend.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import ClassVar, Literal

import numpy as np
import torch

from workbench.analyses.layer_maps import layer_maps, n_positions, stores_all_maps
from workbench.analyses.result import HeadMetric, Result, stored_version
from workbench.errors import InputError
from workbench.traces.metrics import mean_over_rows, normalised_entropy
from workbench.traces.names import tensor_name

__all__ = ["MAX_MAP_TOKENS", "SPREADS", "FunnelResult", "analyse", "mass_share", "spearman"]

METHOD = "PyramidKV, Cai et al. 2024 (pyramidal information funneling); score: Spearman(layer, spread)"
SPREADS = ("entropy", "normalised_entropy", "mass_share")
MAX_MAP_TOKENS = 4096
"""Longest input whose maps are recomputed for mass_share (a long context uses the O(n) statistics only)."""


@dataclass(frozen=True)
class FunnelResult(Result):
    """Per-layer spread (`layers`: one dict per layer), per-head entropy [layer, head], and the funnel scores
    {spread: Spearman rho} with `score` the one of `score_on`."""

    analysis: ClassVar[str] = "funnel"
    schema_version: ClassVar[int] = 1

    model: str
    stack: str
    options: dict
    layers: tuple
    scores: dict
    score: float | None  # None when the spread is constant over layers (no rank correlation)
    head_entropy: np.ndarray
    notes: tuple = ()

    def to_json(self) -> dict:
        return {"analysis": self.analysis, "schema_version": self.schema_version, "method": METHOD,
                "model": self.model, "stack": self.stack, "options": self.options, "layers": list(self.layers),
                "scores": self.scores, "score": self.score,
                "head_entropy": np.round(self.head_entropy, 6).tolist(), "notes": list(self.notes)}

    @classmethod
    def from_json(cls, data: dict) -> FunnelResult:
        stored_version(data, cls)
        return cls(model=str(data.get("model", "?")), stack=str(data.get("stack", "text")),
                   options=dict(data.get("options") or {}), layers=tuple(data["layers"]),
                   scores=dict(data.get("scores") or {}), score=data.get("score"),
                   head_entropy=np.asarray(data.get("head_entropy") or [], dtype=np.float64),
                   notes=tuple(data.get("notes") or ()))

    def head_metrics(self) -> dict[str, HeadMetric]:
        """Mean row entropy of every head (the funnel's per-head detail)."""
        if not self.head_entropy.size:
            return {}
        return {"funnel_entropy": HeadMetric(self.head_entropy, "mean row entropy (nats)",
                                             "mean over query rows of the row's attention entropy (funnel analysis)",
                                             self.stack)}


def spearman(x, y) -> float:
    """Spearman's rank correlation of two equal-length sequences (ties get their mean rank); NaN when either is
    constant or fewer than two values are finite."""
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    keep = np.isfinite(x) & np.isfinite(y)
    x, y = x[keep], y[keep]
    if len(x) < 2:
        return float("nan")
    rx, ry = _ranks(x), _ranks(y)
    if rx.std() == 0 or ry.std() == 0:
        return float("nan")
    return float(np.corrcoef(rx, ry)[0, 1])


def _ranks(values: np.ndarray) -> np.ndarray:
    order = np.argsort(values, kind="stable")
    ranks = np.empty(len(values))
    ranks[order] = np.arange(len(values), dtype=np.float64)
    for value in np.unique(values):  # ties share their mean rank
        tied = values == value
        ranks[tied] = ranks[tied].mean()
    return ranks


def mass_share(maps: torch.Tensor, visible: torch.Tensor, mass: float = 0.9, rows_per_step: int = 256
               ) -> torch.Tensor:
    """[head, query_pos] share of each row's visible keys (visible [query_pos]) that hold `mass` of its attention:
    the fewest keys, taken in order of weight, whose weights sum to at least `mass` x the row's total, divided by
    the number of keys the row sees (float64; 0 for a row that sees no key)."""
    out = torch.zeros(maps.shape[0], maps.shape[1], dtype=torch.float64)
    for start in range(0, maps.shape[1], rows_per_step):
        block = maps[:, start:start + rows_per_step].double()
        ordered = block.sort(-1, descending=True).values.cumsum(-1)
        target = mass * ordered[..., -1:]
        needed = (ordered < target - 1e-12).sum(-1) + 1  # keys before the sum first reaches the target, plus it
        seen = visible[start:start + rows_per_step].double()
        out[:, start:start + rows_per_step] = torch.where(seen > 0, needed / seen.clamp_min(1), 0.0)
    return out


def analyse(trace, *, stack: Literal["text", "vision"] = "text", mass: float = 0.9,
            score_on: Literal["entropy", "normalised_entropy", "mass_share"] = "entropy",
            maps: Literal["auto", "none"] = "auto", tracer=None, max_map_tokens: int = MAX_MAP_TOKENS,
            progress: Callable[[int, int], None] | None = None) -> FunnelResult:
    """Per-layer spread of attention and the funnel score of `trace` (module docstring).

    maps: "auto" computes mass_share from stored maps, or from maps recomputed through `tracer` when given and the
    input has at most max_map_tokens positions; "none" uses the O(n) statistics only.

    >>> import workbench
    >>> result = analyse(workbench.trace("tiny-gpt2", "The cat sat on the mat", raw=True))
    >>> len(result.layers), sorted(result.scores)
    (3, ['entropy', 'normalised_entropy'])
    """
    if stack not in trace.stacks:
        raise InputError(f"the trace has no {stack!r} stack; it has {', '.join(trace.stacks)}")
    if score_on not in SPREADS:
        raise InputError(f"score_on takes {', '.join(SPREADS)}, not {score_on!r}")
    if not 0 < mass <= 1:
        raise InputError(f"mass must be in (0, 1], not {mass}")
    n_layers, n = trace.n_layers(stack), n_positions(trace, stack)
    rows, head_entropy, notes = [], np.zeros((n_layers, trace.n_heads(stack))), []
    for layer in range(n_layers):
        entropy = trace.tensor(tensor_name(stack, layer, "entropy"))
        counts = trace.tensor(tensor_name(stack, layer, "region_count"))
        per_head = mean_over_rows(entropy, counts)
        head_entropy[layer] = per_head.numpy()
        rows.append({"layer": layer, "entropy": round(float(per_head.mean()), 6),
                     "normalised_entropy": round(float(mean_over_rows(normalised_entropy(entropy, counts),
                                                                      counts).mean()), 6)})
    shares = _mass_shares(trace, stack, mass, maps, tracer, max_map_tokens, n, progress, notes)
    if shares is not None:
        for row, share in zip(rows, shares):
            row["mass_share"] = round(share, 6)
    elif score_on == "mass_share":
        raise InputError("score_on='mass_share' needs full maps: " + notes[-1])
    spreads = [s for s in SPREADS if s in rows[0]]
    scores = {s: _finite(spearman(range(n_layers), [row[s] for row in rows])) for s in spreads}
    options = {"mass": mass, "score_on": score_on, "maps": maps, "positions": n,
               "mass_share_from": None if shares is None else
               ("stored maps" if stores_all_maps(trace, stack) else "recomputed maps")}
    return FunnelResult(model=trace.model.get("name", "?"), stack=stack, options=options, layers=tuple(rows),
                        scores=scores, score=scores[score_on], head_entropy=head_entropy, notes=tuple(notes))


def _finite(value: float) -> float | None:
    return round(value, 6) if np.isfinite(value) else None


def _mass_shares(trace, stack, mass, maps, tracer, max_map_tokens, n, progress, notes) -> list | None:
    """Per-layer mean mass_share, or None (with a note saying why) when no maps are at hand."""
    if maps == "none":
        notes.append("mass_share skipped (maps='none'): the O(n) statistics do not determine it")
        return None
    if not stores_all_maps(trace, stack):
        if tracer is None:
            notes.append("mass_share needs full maps: this bundle stores none for every layer and head (trace "
                         "with --maps all:all, or recompute them through the model)")
            return None
        if n > max_map_tokens:
            notes.append(f"mass_share needs full maps, not recomputed for {n} positions (above {max_map_tokens}): "
                         "a long context uses the O(n) statistics only")
            return None
    out = []
    for layer, layer_map in layer_maps(trace, stack=stack, tracer=tracer, progress=progress):
        counts = trace.tensor(tensor_name(stack, layer, "region_count"))  # per layer: sliding windows differ
        share = mass_share(layer_map, counts.double().sum(-1), mass)
        out.append(float(mean_over_rows(share, counts).mean()))
    return out
