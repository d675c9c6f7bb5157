"""Head ablation: replace a head's output (before W_O) by zero, by its mean over a reference set of prompts, or by
its output on another prompt (resample ablation, Chan et al. 2022 "Causal scrubbing"), and measure the metric.

- method "zero": o = 0 (the head writes only W_O's bias share, which is not per head and stays);
- "mean": o = the mean of the head's output over every position of the reference prompts (lengths may differ);
- "resample": o = the head's output on the pair's corrupted prompt (same token length), position by position.

Each head of `heads` is ablated alone (one run each), or all of them together (`together=True`, one run).
Reported per run: the metric (mean over the prompts), its change from the clean run, and, where every prompt has a
corrupted version, the fraction of the clean behaviour kept, (ablated - corrupted) / (clean - corrupted).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import ClassVar, Literal

import numpy as np
import torch

from workbench.analyses.causal.metrics import Metric, MetricKind, Pair, check_metric, normalised
from workbench.analyses.causal.patching import slots
from workbench.analyses.causal.sweep import Progress, recorded, sweep, token_ids
from workbench.analyses.result import HeadMetric, Result, stored_version
from workbench.errors import BundleError, InputError
from workbench.interventions.activations import Replacement

__all__ = ["METHODS", "AblationResult", "analyse", "mean_head_outputs"]

METHOD = "head ablation (zero, mean over a reference set, resample from a corrupted prompt)"
Method = Literal["zero", "mean", "resample"]
METHODS = ("zero", "mean", "resample")


@dataclass(frozen=True)
class AblationResult(Result):
    """One entry per run: `runs[i]` lists the (layer, head) ablated together; `ablated` [run] is the mean metric,
    `change` = ablated - clean, `kept` = (ablated - corrupted) / (clean - corrupted) (NaN without corrupted)."""

    analysis: ClassVar[str] = "ablation"
    schema_version: ClassVar[int] = 1

    model: str
    options: dict
    prompts: tuple
    runs: tuple
    clean: float
    corrupted: float | None
    ablated: np.ndarray = field(compare=False, repr=False)
    cost: dict = field(default_factory=dict)

    @property
    def change(self) -> np.ndarray:
        return self.ablated - self.clean

    @property
    def kept(self) -> np.ndarray:
        if self.corrupted is None:
            return np.full_like(self.ablated, np.nan)
        return normalised(self.ablated, self.clean, self.corrupted)

    def head_metrics(self) -> dict[str, HeadMetric]:
        single = [run[0] for run in self.runs if len(run) == 1]
        if len(single) != len(self.runs) or not single:
            return {}
        grid = np.full((max(l for l, _ in single) + 1, max(h for _, h in single) + 1), np.nan)
        for (layer, head), value in zip(single, self.change):
            grid[layer, head] = value
        return {"ablation_change": HeadMetric(grid, f"metric change ({self.options.get('method')}-ablation)",
                                              "ablated - clean metric, one head ablated at a time", sparse=True)}

    def to_json(self) -> dict:
        def listed(values):
            return [None if not np.isfinite(v) else round(float(v), 8) for v in values]

        return {"analysis": self.analysis, "schema_version": self.schema_version, "method": METHOD,
                "model": self.model, "options": self.options, "prompts": list(self.prompts),
                "runs": [[list(h) for h in run] for run in self.runs], "clean": self.clean,
                "corrupted": self.corrupted, "ablated": listed(self.ablated), "change": listed(self.change),
                "kept": listed(self.kept), "cost": self.cost}

    @classmethod
    def from_json(cls, data: dict) -> AblationResult:
        stored_version(data, cls)
        runs = tuple(tuple((int(l), int(h)) for l, h in run) for run in data["runs"])
        ablated = np.array([np.nan if v is None else v for v in data["ablated"]], dtype=np.float64)
        if ablated.shape != (len(runs),):
            raise BundleError(f"the ablation result has {len(runs)} runs but {ablated.size} values")
        corrupted = data.get("corrupted")
        return cls(model=str(data.get("model", "?")), options=dict(data.get("options") or {}),
                   prompts=tuple(dict(p) for p in data.get("prompts", [])), runs=runs, clean=float(data["clean"]),
                   corrupted=None if corrupted is None else float(corrupted), ablated=ablated,
                   cost=dict(data.get("cost") or {}))


def mean_head_outputs(tracer, reference: Sequence[str]) -> dict[int, torch.Tensor]:
    """{layer: [head, d_head]}: each head's output averaged over every token position of the reference prompts."""
    if not reference:
        raise InputError("mean ablation needs reference prompts (--reference FILE.jsonl)")
    sums: dict[int, torch.Tensor] = {}
    count = 0
    for text in reference:
        _, run = recorded(tracer, token_ids(tracer, text))
        for layer, heads in run.heads.items():
            total = heads[0].double().sum(0)
            sums[layer] = sums[layer] + total if layer in sums else total
        count += next(iter(run.heads.values())).shape[1]
    return {layer: (total / count).float() for layer, total in sums.items()}


def analyse(tracer, pairs: Sequence[Pair], *, metric: MetricKind = "logit-diff", method: Method = "zero",
            heads: Sequence[tuple[int, int]] | None = None, together: bool = False,
            positions: Literal["all"] | Sequence[int] = "all", reference: Sequence[str] = (), batch_size: int = 8,
            progress: Progress | None = None) -> AblationResult:
    """Ablate `heads` ((layer, head) pairs; every head by default) on each pair's clean prompt; tracer: a Tracer."""
    pairs = list(pairs)
    if not pairs:
        raise InputError("no prompt to ablate on")
    if method not in METHODS:
        raise InputError(f"the ablation method must be one of {', '.join(METHODS)}, not {method!r}")
    check_metric(metric, pairs)
    if positions == "each":
        raise InputError("ablation patches positions 'all' or a list of positions")
    stack = tracer.layout.stacks["text"]
    everything = [(l, h) for l in range(stack.n_layers) for h in range(stack.n_heads)]
    heads = everything if heads is None else sorted(set(map(tuple, heads)))
    bad = [lh for lh in heads if lh not in set(everything)]
    if bad:
        raise InputError(f"head {bad[0][0]}.{bad[0][1]} does not exist: this model has {stack.n_layers} layers of "
                         f"{stack.n_heads} heads")
    with_corrupted = all(p.corrupted is not None for p in pairs)
    if method == "resample" and not with_corrupted:
        raise InputError("resample ablation takes each head's output from the pair's corrupted prompt: give one for "
                         "every prompt (--corrupted, or 'corrupted' in the JSONL)")
    runs = [tuple(heads)] if together else [(lh,) for lh in heads]
    start = time.perf_counter()
    means = mean_head_outputs(tracer, reference) if method == "mean" else None
    sums = torch.zeros(len(runs), dtype=torch.float64)
    records = []
    for index, pair in enumerate(pairs):
        ids = token_ids(tracer, pair.clean)
        bound = Metric.of(metric, tracer.loaded.tokenizer, pair)
        clean_logits, _ = recorded(tracer, ids)
        record = {**pair.to_json(), "n_tokens": int(ids.shape[1]), "clean_metric": float(bound.value(clean_logits)[0])}
        source = None
        if with_corrupted:
            corrupted_ids = token_ids(tracer, pair.corrupted)
            if method == "resample" and corrupted_ids.shape != ids.shape:
                raise InputError(f"resample ablation needs prompts of equal token length ({ids.shape[1]} vs "
                                 f"{corrupted_ids.shape[1]} for {pair.clean[:40]!r})")
            corrupted_logits, source = recorded(tracer, corrupted_ids)
            record["corrupted_metric"] = float(bound.value(corrupted_logits)[0])
        slot = slots(positions, ids.shape[1])[0]
        rows = [[_ablated(method, layer, head, slot, means, source) for layer, head in run] for run in runs]
        sums += sweep(tracer, ids, rows, bound, batch_size=batch_size, progress=progress, done=index * len(rows),
                      total=len(pairs) * len(rows))
        records.append(record)
    options = {"metric": metric, "method": method, "together": together, "batch_size": batch_size,
               "positions": positions if isinstance(positions, str) else list(positions),
               "reference_prompts": len(reference) if method == "mean" else None, "head_output": "before W_O"}
    return AblationResult(
        model=tracer.loaded.name, options=options, prompts=tuple(records), runs=tuple(runs),
        clean=float(np.mean([r["clean_metric"] for r in records])),
        corrupted=float(np.mean([r["corrupted_metric"] for r in records])) if with_corrupted else None,
        ablated=(sums / len(pairs)).numpy(),
        cost={"runs": len(pairs) * len(runs), "seconds": round(time.perf_counter() - start, 4)})


def _ablated(method, layer, head, slot, means, source) -> Replacement:
    if method == "zero":
        values = torch.zeros(())
    elif method == "mean":
        values = means[layer]  # [head, d_head], broadcast over positions
    else:
        values = source.heads[layer][0]
    return Replacement("heads", layer, values, heads=(head,), positions=slot)
