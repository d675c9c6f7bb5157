"""Activation patching (Vig et al. 2020; Meng et al. 2022; Wang et al. 2022, "Interpretability in the Wild"): run a
clean and a corrupted prompt of equal token length, copy one component's activation from one run into the other,
and measure how far a metric moves.

- what: "heads" (one query head's output before W_O), "attn-out" (all heads of a layer: the attention block's
  output) or "resid" (the residual stream entering layer l; l = n_layers is the stream after the last layer);
- direction: "denoise" runs the corrupted prompt with clean activations patched in (which components suffice to
  restore the behaviour); "noise" runs the clean prompt with corrupted activations (which are necessary);
- positions: "all" patches every position at once, "each" sweeps positions one at a time, a list patches those
  positions together (negative = from the end).

effect = (patched - corrupted) / (clean - corrupted), with the metric averaged over the pairs first. Patching the
residual stream after the last layer at the last position reproduces the source run's metric exactly.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import ClassVar, Literal

import numpy as np
import torch

from workbench.analyses.causal.metrics import Metric, MetricKind, Pair, check_metric, normalised
from workbench.analyses.causal.sweep import Progress, recorded, sweep, token_ids
from workbench.analyses.result import HeadMetric, Result, stored_version
from workbench.errors import BundleError, InputError
from workbench.interventions.activations import Replacement

__all__ = ["DIRECTIONS", "WHAT", "PatchingResult", "analyse"]

METHOD = "activation patching (Vig et al. 2020; Meng et al. 2022; Wang et al. 2022)"
What = Literal["heads", "attn-out", "resid"]
Direction = Literal["denoise", "noise"]
WHAT = ("heads", "attn-out", "resid")
DIRECTIONS = ("denoise", "noise")
Positions = Literal["all", "each"] | Sequence[int]


def check_options(*, what: str, direction: str, positions) -> None:
    if what not in WHAT:
        raise InputError(f"what must be one of {', '.join(WHAT)}, not {what!r}")
    if direction not in DIRECTIONS:
        raise InputError(f"direction must be 'denoise' or 'noise', not {direction!r}")
    if isinstance(positions, str) and positions not in ("all", "each"):
        raise InputError(f"positions must be 'all', 'each' or a list of token positions, not {positions!r}")
    if not isinstance(positions, str) and not positions:
        raise InputError("the list of positions is empty")


def slots(positions, n_tokens: int) -> list[tuple[int, ...] | None]:
    """The position sets patched together, one per result slot: None = every position."""
    if positions == "all":
        return [None]
    if positions == "each":
        return [(p,) for p in range(n_tokens)]
    resolved = []
    for p in positions:
        q = p + n_tokens if p < 0 else p
        if not 0 <= q < n_tokens:
            raise InputError(f"position {p} is outside a prompt of {n_tokens} tokens")
        resolved.append(q)
    return [tuple(sorted(set(resolved)))]


def units(what: str, layers: Sequence[int], heads: Sequence[int]) -> list[tuple[int, int | None]]:
    """(layer, head or None) of every component patched, in result order."""
    if what == "heads":
        return [(layer, head) for layer in layers for head in heads]
    return [(layer, None) for layer in layers]


@dataclass(frozen=True)
class PatchingResult(Result):
    """Mean metrics over the pairs: `patched` and `effect` [layer, head, slot] over `layers` x `heads` (one head
    entry, -1, for attn-out and resid) x position slots (`slot_positions`: the positions patched together, None =
    all); `clean` and `corrupted` are the unpatched runs."""

    analysis: ClassVar[str] = "patching"
    schema_version: ClassVar[int] = 1

    model: str
    options: dict
    pairs: tuple
    layers: tuple
    heads: tuple
    slot_positions: tuple
    clean: float
    corrupted: float
    patched: np.ndarray = field(compare=False, repr=False)
    effect: np.ndarray = field(compare=False, repr=False)
    cost: dict = field(default_factory=dict)

    def ranking(self, top: int | None = 10) -> list[dict]:
        """Components by effect, largest first (NaN last)."""
        flat = np.nan_to_num(self.effect, nan=-np.inf).ravel()
        order = np.argsort(-flat, kind="stable")[:top]
        out = []
        for index in order:
            li, hi, si = np.unravel_index(index, self.effect.shape)
            out.append({"layer": int(self.layers[li]), "head": int(self.heads[hi]),
                        "positions": self.slot_positions[si], "effect": float(self.effect[li, hi, si])})
        return out

    def head_metrics(self) -> dict[str, HeadMetric]:
        if self.options.get("what") != "heads" or len(self.slot_positions) != 1:
            return {}
        n_layers = max(self.layers) + 1
        n_heads = max(self.heads) + 1
        grid = np.full((n_layers, n_heads), np.nan)
        grid[np.ix_(list(self.layers), list(self.heads))] = self.effect[:, :, 0]
        return {"patching_effect": HeadMetric(grid, f"patching effect ({self.options.get('direction')})",
                                              "(patched - corrupted) / (clean - corrupted) of the metric",
                                              sparse=True)}

    def to_json(self) -> dict:
        def rounded(array):
            return [[[None if not np.isfinite(v) else round(float(v), 8) for v in row] for row in plane]
                    for plane in array]

        return {"analysis": self.analysis, "schema_version": self.schema_version, "method": METHOD,
                "model": self.model, "options": self.options, "pairs": list(self.pairs), "layers": list(self.layers),
                "heads": list(self.heads),
                "slot_positions": [None if s is None else list(s) for s in self.slot_positions],
                "clean": self.clean, "corrupted": self.corrupted, "patched": rounded(self.patched),
                "effect": rounded(self.effect), "ranking": self.ranking(20), "cost": self.cost}

    @classmethod
    def from_json(cls, data: dict) -> PatchingResult:
        stored_version(data, cls)
        patched = np.array(data["patched"], dtype=np.float64)
        effect = np.array(data["effect"], dtype=np.float64)
        shape = (len(data["layers"]), len(data["heads"]), len(data["slot_positions"]))
        if patched.shape != shape or effect.shape != shape:
            raise BundleError(f"the patching result's arrays have shapes {patched.shape} and {effect.shape}, "
                              f"not {shape} (layers x heads x position slots)")
        return cls(model=str(data.get("model", "?")), options=dict(data.get("options") or {}),
                   pairs=tuple(dict(p) for p in data.get("pairs", [])), layers=tuple(data["layers"]),
                   heads=tuple(data["heads"]),
                   slot_positions=tuple(None if s is None else tuple(s) for s in data["slot_positions"]),
                   clean=float(data["clean"]), corrupted=float(data["corrupted"]), patched=patched, effect=effect,
                   cost=dict(data.get("cost") or {}))


def analyse(tracer, pairs: Sequence[Pair], *, metric: MetricKind = "logit-diff", what: What = "heads",
            direction: Direction = "denoise", positions: Positions = "all", layers: Sequence[int] | None = None,
            heads: Sequence[int] | None = None, batch_size: int = 8,
            progress: Progress | None = None) -> PatchingResult:
    """Patch every component of `what` (in `layers` x `heads`, all by default) at `positions` from one run of each
    pair into the other; tracer: a `Tracer` (hf backend)."""
    pairs = list(pairs)
    if not pairs:
        raise InputError("no prompt pair to patch")
    check_options(what=what, direction=direction, positions=positions)
    check_metric(metric, pairs)
    if any(p.corrupted is None for p in pairs):
        raise InputError("patching needs a corrupted prompt for every clean one")
    stack = tracer.layout.stacks["text"]
    n_sites = stack.n_layers + (1 if what == "resid" else 0)
    layers = _indices("layer", layers, n_sites)
    heads = _indices("head", heads, stack.n_heads) if what == "heads" else [-1]
    prepared = []
    for pair in pairs:  # every tokenisation check before the first forward
        clean_ids, corrupted_ids = token_ids(tracer, pair.clean), token_ids(tracer, pair.corrupted)
        if clean_ids.shape != corrupted_ids.shape:
            raise InputError(f"clean and corrupted prompts must have the same number of tokens ({clean_ids.shape[1]} "
                             f"vs {corrupted_ids.shape[1]} for {pair.clean[:40]!r})")
        slots(positions, clean_ids.shape[1])  # positions outside this prompt fail here, not after forwards
        prepared.append((pair, clean_ids, corrupted_ids, Metric.of(metric, tracer.loaded.tokenizer, pair)))
    lengths = {ids.shape[1] for _, ids, _, _ in prepared}
    if positions == "each" and len(lengths) > 1:
        raise InputError("positions 'each' needs pairs of one token length; these have lengths "
                         f"{sorted(lengths)} (give explicit positions, e.g. -1)")
    plan = units(what, layers, heads)
    n_slots = len(slots(positions, next(iter(lengths))))
    total = len(pairs) * len(plan) * n_slots
    sums = torch.zeros(len(plan) * n_slots, dtype=torch.float64)
    records, start = [], time.perf_counter()
    for index, (pair, clean_ids, corrupted_ids, bound) in enumerate(prepared):
        clean_logits, clean_run = recorded(tracer, clean_ids)
        corrupted_logits, corrupted_run = recorded(tracer, corrupted_ids)
        source, target_ids = (clean_run, corrupted_ids) if direction == "denoise" else (corrupted_run, clean_ids)
        rows = [[_replacement(what, layer, head, source, slot)] for layer, head in plan
                for slot in slots(positions, clean_ids.shape[1])]
        sums += sweep(tracer, target_ids, rows, bound, batch_size=batch_size, progress=progress,
                      done=index * len(rows), total=total)
        records.append({**pair.to_json(), "n_tokens": int(clean_ids.shape[1]),
                        "clean_metric": float(bound.value(clean_logits)[0]),
                        "corrupted_metric": float(bound.value(corrupted_logits)[0])})
    seconds = time.perf_counter() - start
    clean = float(np.mean([r["clean_metric"] for r in records]))
    corrupted = float(np.mean([r["corrupted_metric"] for r in records]))
    patched = (sums / len(pairs)).numpy().reshape(len(layers), len(heads), n_slots)
    options = {"metric": metric, "what": what, "direction": direction,
               "positions": positions if isinstance(positions, str) else list(positions), "batch_size": batch_size,
               "head_output": "before W_O" if what == "heads" else None,
               "resid_layer": "the stream entering the layer (n_layers: after the last layer)" if what == "resid"
               else None}
    # pairs of several lengths: one slot ("all", or the positions as given, negative ones counted per pair)
    labels = slots(positions, next(iter(lengths))) if len(lengths) == 1 or positions == "all" else [tuple(positions)]
    return PatchingResult(model=tracer.loaded.name, options=options, pairs=tuple(records), layers=tuple(layers),
                          heads=tuple(heads), slot_positions=tuple(labels), clean=clean, corrupted=corrupted,
                          patched=patched, effect=normalised(patched, clean, corrupted),
                          cost={"forwards": len(pairs) * (2 + -(-len(plan) * n_slots // batch_size)), "runs": total,
                                "seconds": round(seconds, 4)})


def _replacement(what, layer, head, source, slot) -> Replacement:
    if what == "resid":
        return Replacement("resid", layer, source.resid[layer][0], positions=slot)
    return Replacement("heads", layer, source.heads[layer][0], heads=None if head is None else (head,), positions=slot)


def _indices(name: str, chosen: Sequence[int] | None, count: int) -> list[int]:
    if chosen is None:
        return list(range(count))
    bad = [c for c in chosen if not 0 <= c < count]
    if bad:
        raise InputError(f"{name} {bad[0]} does not exist: this model has {count} ({name}s 0-{count - 1})")
    return sorted(set(chosen))
