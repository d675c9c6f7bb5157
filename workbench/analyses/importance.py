"""Head importance (Michel, Levy & Neubig 2019, "Are Sixteen Heads Really Better than One?") and the pruning curve.

Each head's output (before W_O) is multiplied by a mask variable m_h = 1; the importance of head h is the mean over
the prompts of |dL/dm_h|, L being the prompt's language-modelling loss (mean next-token cross-entropy over its
positions). By default the scores are then normalised per layer by the layer's L2 norm, as the paper's released
code does (normalise="none" keeps the raw means). Heads are ranked by the (normalised) scores across layers.

The pruning curve zero-ablates heads in that order (the least important first, as the paper prunes; order="most"
removes the most important first) and records the mean loss and next-token accuracy over the same prompts after
each count of heads removed.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import ClassVar, Literal

import numpy as np
import torch

from workbench.analyses.causal.sweep import token_ids
from workbench.analyses.lens import check_known_tokens
from workbench.analyses.result import HeadMetric, Result, stored_version
from workbench.errors import BundleError, InputError
from workbench.interventions.head_mask import HeadMask

__all__ = ["NORMALISE", "ORDERS", "ImportanceResult", "analyse", "curve_counts", "prompt_loss"]

METHOD = "Michel et al. 2019 head importance: mean |dL/dm_h| over prompts through a head mask of ones"
NORMALISE = ("layer", "none")
ORDERS = ("least", "most")
Progress = Callable[[str, int, int], None]


@dataclass(frozen=True)
class ImportanceResult(Result):
    """raw [layer, head]: mean |dL/dm_h|; gradient [layer, head]: mean signed dL/dm_h; scores [layer, head]: raw
    after the chosen normalisation; ranking: (layer, head) most important first; curve: None or one entry per
    count of heads removed {removed, loss, accuracy, heads: the last removed}."""

    analysis: ClassVar[str] = "importance"
    schema_version: ClassVar[int] = 1

    model: str
    options: dict
    n_prompts: int
    loss: float
    raw: np.ndarray = field(compare=False, repr=False)
    gradient: np.ndarray = field(compare=False, repr=False)
    scores: np.ndarray = field(compare=False, repr=False)
    ranking: tuple = ()
    curve: tuple | None = None
    cost: dict = field(default_factory=dict)

    def head_metrics(self) -> dict[str, HeadMetric]:
        return {"importance": HeadMetric(self.scores, "head importance",
                                         f"mean |dL/dm_h| over {self.n_prompts} prompt(s), normalised "
                                         f"{self.options.get('normalise')} (Michel et al. 2019)", zmin=0.0)}

    def to_json(self) -> dict:
        return {"analysis": self.analysis, "schema_version": self.schema_version, "method": METHOD,
                "model": self.model, "options": self.options, "n_prompts": self.n_prompts, "loss": self.loss,
                "raw": np.round(self.raw, 10).tolist(), "gradient": np.round(self.gradient, 10).tolist(),
                "scores": np.round(self.scores, 10).tolist(), "ranking": [list(h) for h in self.ranking],
                "curve": None if self.curve is None else list(self.curve), "cost": self.cost}

    @classmethod
    def from_json(cls, data: dict) -> ImportanceResult:
        stored_version(data, cls)
        arrays = [np.asarray(data[name], dtype=np.float64) for name in ("raw", "gradient", "scores")]
        if any(a.ndim != 2 or a.shape != arrays[0].shape for a in arrays):
            raise BundleError("the importance result's raw, gradient and scores must be [layer, head] of one shape")
        curve = data.get("curve")
        return cls(model=str(data.get("model", "?")), options=dict(data.get("options") or {}),
                   n_prompts=int(data["n_prompts"]), loss=float(data["loss"]), raw=arrays[0], gradient=arrays[1],
                   scores=arrays[2], ranking=tuple((int(l), int(h)) for l, h in data.get("ranking", [])),
                   curve=None if curve is None else tuple(dict(c) for c in curve), cost=dict(data.get("cost") or {}))


def prompt_loss(logits: torch.Tensor, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(mean next-token cross-entropy, accuracy) of logits [1, query_pos, vocab] on ids [1, query_pos]."""
    predicted, wanted = logits[0, :-1].float(), ids[0, 1:].to(logits.device)
    loss = torch.nn.functional.cross_entropy(predicted, wanted)
    return loss, (predicted.argmax(-1) == wanted).double().mean()


def curve_counts(n_heads: int) -> list[int]:
    """Counts of heads removed on the curve: every count up to 32 heads, else every 5 % (the paper's steps)."""
    if n_heads <= 32:
        return list(range(n_heads + 1))
    return sorted({round(percent * n_heads / 100) for percent in range(0, 101, 5)})


def analyse(tracer, prompts: Sequence[str], *, normalise: Literal["layer", "none"] = "layer", curve: bool = False,
            order: Literal["least", "most"] = "least", counts: Sequence[int] | None = None,
            progress: Progress | None = None) -> ImportanceResult:
    """Head importance over `prompts` (each fed as is, at least 2 tokens); curve=True adds the pruning curve."""
    prompts = list(prompts)
    if not prompts:
        raise InputError("no prompt to score heads on")
    if normalise not in NORMALISE:
        raise InputError(f"the normalisation must be one of {', '.join(NORMALISE)}, not {normalise!r}")
    if order not in ORDERS:
        raise InputError(f"the pruning order must be one of {', '.join(ORDERS)}, not {order!r}")
    if tracer.loaded.kind == "encoder":
        raise InputError(f"{tracer.loaded.name} is an encoder; head importance here uses the next-token loss")
    stack = tracer.layout.stacks["text"]
    shape = (stack.n_layers, stack.n_heads)
    inputs = [token_ids(tracer, text) for text in prompts]
    for text, ids in zip(prompts, inputs):
        check_known_tokens(tracer.loaded.tokenizer, text, ids[0], what="the prompt")
    short = [text for text, ids in zip(prompts, inputs) if ids.shape[1] < 2]
    if short:
        raise InputError(f"the prompt {short[0][:40]!r} is under 2 tokens: it has no next token to predict")
    start = time.perf_counter()
    absolute = torch.zeros(shape, dtype=torch.float64)
    signed = torch.zeros(shape, dtype=torch.float64)
    losses = []
    for index, ids in enumerate(inputs):
        mask = torch.ones(shape, requires_grad=True)
        loss, _ = prompt_loss(tracer.logits(ids, edit=HeadMask(tracer.layout, mask), gradients=True), ids)
        (grad,) = torch.autograd.grad(loss, mask)
        absolute += grad.double().abs()
        signed += grad.double()
        losses.append(float(loss.detach()))
        if progress:
            progress("gradients", index + 1, len(inputs))
    raw = absolute / len(inputs)
    scores = raw / (raw.norm(dim=-1, keepdim=True) + 1e-20) if normalise == "layer" else raw.clone()
    flat = scores.flatten().numpy()
    order_index = np.argsort(-flat, kind="stable")  # most important first; ties keep (layer, head) order
    ranking = tuple((int(i) // shape[1], int(i) % shape[1]) for i in order_index)
    seconds = time.perf_counter() - start
    pruned = None
    if curve:
        removal = ranking[::-1] if order == "least" else ranking
        chosen = curve_counts(len(ranking)) if counts is None else sorted(set(counts))
        if any(not 0 <= c <= len(ranking) for c in chosen):
            raise InputError(f"curve counts must lie in 0..{len(ranking)} (the model's heads)")
        pruned = tuple(_pruned(tracer, inputs, removal, chosen, shape, progress))
    options = {"normalise": normalise, "order": order, "loss": "mean next-token cross-entropy per prompt",
               "head_output": "before W_O", "ablation": "zero"}
    return ImportanceResult(
        model=tracer.loaded.name, options=options, n_prompts=len(inputs), loss=float(np.mean(losses)),
        raw=raw.numpy(), gradient=(signed / len(inputs)).numpy(), scores=scores.numpy(), ranking=ranking,
        curve=pruned, cost={"gradient_seconds": round(seconds, 4),
                            "curve_seconds": round(time.perf_counter() - start - seconds, 4) if curve else None})


def _pruned(tracer, inputs, removal, counts, shape, progress):
    """One entry per count: the first `count` heads of `removal` zero-ablated, mean loss and accuracy."""
    for done, count in enumerate(counts):
        mask = torch.ones(shape)
        for layer, head in removal[:count]:
            mask[layer, head] = 0.0
        runs = [prompt_loss(tracer.logits(ids, edit=HeadMask(tracer.layout, mask)), ids) for ids in inputs]
        yield {"removed": int(count), "loss": float(np.mean([float(loss) for loss, _ in runs])),
               "accuracy": float(np.mean([float(accuracy) for _, accuracy in runs])),
               "heads": [list(h) for h in removal[max(count - 1, 0):count]]}
        if progress:
            progress("curve", done + 1, len(counts))
