"""OPERA's knowledge aggregation (Huang et al. 2024, "OPERA: Alleviating Hallucination in Multi-Modal Large Language
Models via Over-Trust Penalty and Retrospection-Allocation"; reference shikiw/OPERA, its patched
`generation/utils.py`): columnar attention patterns in generated text, where later tokens concentrate on one
"summary" token.

Per generated token (step t, the query row of the token itself, as the reference scores a candidate):
  a_t[j]   = max_h P_h[t, j] / sum_k max_h P_h[t, k]   (one layer, default the last; max over heads, row renormalised)
  W        = the local window: rows and columns of the generated tokens in the window (the reference: all of them)
  phi_t(c) = 1e-7 * prod_{i >= c} (sigma * W[i, c])   (column-wise product over the lower triangle, sigma = 50)
  score_t  = max_c phi_t(c), summary_t = argmax_c (the column a knowledge-aggregation pattern forms on)
Scores are kept as log10 (the product under- or overflows quickly). Retrospection (the reference's rollback
trigger) fires at step t when the same summary column was the argmax at more than `threshold` steps so far and
lies at least 10 tokens into the response. For the first 10 steps the reference penalises candidates by their
attention to the image instead (`image_attention`, recorded when the input has an image).

Capture runs an observer through the workbench attention implementation while generating (or teacher-forcing
a trace's tokens): it computes only the new query row of the chosen layer, O(heads x keys) per step, and keeps
the window rows restricted to the window columns (window^2 floats), never a full [query_pos, key_pos] map.
"""

from __future__ import annotations

import math
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import ClassVar

import numpy as np
import torch

from workbench.analyses.result import Result, TokenValues, stored_version
from workbench.errors import BundleError, InputError
from workbench.interventions import Runtime, probabilities

__all__ = ["OperaResult", "analyse", "column_scores", "opera"]

METHOD = "Huang et al. 2024, OPERA over-trust score (column-wise product of the scaled local-window attention)"
# The reference multiplies every column product by 1e-7 and never rolls back to one of the first 10 tokens.
REFERENCE_OFFSET = -7.0
EARLY_TOKENS = 10


def column_scores(window: torch.Tensor, scale: float) -> torch.Tensor:
    """log10 of phi(c) = 1e-7 * prod_{i >= c} scale * window[i, c] for window [row, column] (square, rows and
    columns the same generated tokens) -> [column] (float64; -inf where a factor is zero)."""
    logs = torch.log10(scale * window.double())
    logs = logs.masked_fill(~torch.ones_like(logs, dtype=torch.bool).tril(), 0.0)
    return REFERENCE_OFFSET + logs.sum(0)


@dataclass(frozen=True)
class OperaResult(Result):
    """Over-trust scores of one generation. Step t is generated token tokens[t] ({step, position, id, text}).
    log10_score [step], summary [step] (token position of the argmax column), retrospection [step] bool,
    image_attention [step] (NaN without an image)."""

    analysis: ClassVar[str] = "opera"
    schema_version: ClassVar[int] = 1

    model: str
    options: dict
    prompt: str
    tokens: tuple
    log10_score: np.ndarray = field(compare=False, repr=False)
    summary: np.ndarray = field(compare=False, repr=False)
    retrospection: np.ndarray = field(compare=False, repr=False)
    image_attention: np.ndarray = field(compare=False, repr=False)
    cost: dict = field(default_factory=dict)

    @property
    def text(self) -> str:
        return "".join(token["text"] for token in self.tokens)

    def positions(self) -> np.ndarray:
        return np.array([token["position"] for token in self.tokens], dtype=np.int64)

    def token_values(self) -> dict[str, TokenValues]:
        return {"opera_score": TokenValues(self.positions(), self.log10_score.astype(np.float64),
                                           "OPERA over-trust score (log10)",
                                           "log10 of the largest column-wise product of the scaled window attention")}

    def token_sets(self) -> dict[str, list[int]]:
        return {"opera_summary": sorted({int(p) for p in self.summary if p >= 0}),
                "opera_retrospection": [int(p) for p, r in zip(self.positions(), self.retrospection) if r]}

    def to_json(self) -> dict:
        def finite(value: float):
            return round(float(value), 6) if math.isfinite(float(value)) else None

        return {"analysis": self.analysis, "schema_version": self.schema_version, "method": METHOD,
                "model": self.model, "options": self.options, "prompt": self.prompt, "text": self.text,
                "tokens": list(self.tokens), "log10_score": [finite(v) for v in self.log10_score],
                "summary": [int(p) for p in self.summary], "retrospection": [bool(r) for r in self.retrospection],
                "image_attention": [finite(v) for v in self.image_attention], "cost": self.cost}

    @classmethod
    def from_json(cls, data: dict) -> OperaResult:
        stored_version(data, cls)
        tokens = tuple(dict(token) for token in data["tokens"])
        n = len(tokens)
        arrays = {name: data.get(name) or [] for name in ("log10_score", "summary", "retrospection",
                                                            "image_attention")}
        if any(len(values) != n for values in arrays.values()):
            raise BundleError(f"the opera result has {n} tokens but arrays of lengths "
                              f"{ {k: len(v) for k, v in arrays.items()} }")

        def floats(values):
            return np.array([np.nan if v is None else float(v) for v in values], dtype=np.float64)

        return cls(model=str(data.get("model", "?")), options=dict(data.get("options") or {}),
                   prompt=str(data.get("prompt", "")), tokens=tokens, log10_score=floats(arrays["log10_score"]),
                   summary=np.array(arrays["summary"], dtype=np.int64),
                   retrospection=np.array(arrays["retrospection"], dtype=bool),
                   image_attention=floats(arrays["image_attention"]), cost=dict(data.get("cost") or {}))


class _OverTrust(Runtime):
    """Observer of one layer's attention at each new generated query row (changes nothing)."""

    def __init__(self, layout, *, layer: int, start: int, window: int | None, scale: float,
                 image_positions: Sequence[int]):
        super().__init__(layout)
        self.layer, self.start, self.window, self.scale = layer, start, window, scale
        self.image = torch.tensor(sorted(image_positions), dtype=torch.long)
        self.rows: deque = deque(maxlen=window)  # (position, row over key positions start..position) float64
        self.image_attention: list[float] = []
        self.scores: list[tuple[float, int]] = []

    def apply(self, module, *, query, key, value, attention_mask, scaling, causal, output):
        stack, layer = self.layout.locate(module)
        if stack != "text" or layer != self.layer:
            return output
        n_queries, n_keys = query.shape[2], key.shape[2]
        first = n_keys - n_queries  # position of the first query row of this forward
        if first + n_queries <= self.start:
            return output
        probs = probabilities(query[:1], key[:1], attention_mask, scaling=scaling, causal=causal)[0]
        for index in range(max(0, self.start - first), n_queries):
            position = first + index
            row = probs[:, index, : position + 1].amax(0).double()  # [key_pos], max over heads
            row = row / row.sum().clamp_min(1e-300)
            image = self.image[self.image <= position]
            self.image_attention.append(float(row[image].sum()) if len(self.image) else float("nan"))
            self.rows.append((position, row[self.start:]))
            self.scores.append(self._score())
        return output

    def _score(self) -> tuple[float, int]:
        first = self.rows[0][0]
        last = self.rows[-1][0]
        size = last - first + 1
        window = torch.zeros(size, size, dtype=torch.float64)
        for position, row in self.rows:
            window[position - first, : position - first + 1] = row[first - self.start: position - self.start + 1]
        logs = column_scores(window, self.scale)
        column = int(logs.argmax())
        return float(logs[column]), first + column


def opera(tracer, prompt: str, image=None, *, max_new_tokens: int = 16, continuation: Sequence[int] | None = None,
          layer: int = -1, scale: float = 50.0, window: int | None = None, threshold: int = 15,
          system: str | None = None, raw: bool = False) -> OperaResult:
    """Generate greedily (or follow `continuation`, token ids) and score every generated token's over-trust.

    layer: the attention layer (negative counts from the end; the reference: the last). window: the last
    `window` generated tokens (None: all of them, as the reference's window starts at the response).
    """
    from workbench.analyses.tracing import as_tracer
    from workbench.capture.generation import eos_ids, forward_inputs, greedy
    from workbench.capture.inputs import prepare_input

    check_options(scale=scale, window=window, threshold=threshold)
    tracer = as_tracer(tracer)
    loaded = tracer.loaded
    n_layers = tracer.layout.stacks["text"].n_layers
    if not -n_layers <= layer < n_layers:
        raise InputError(f"--layer {layer} is outside the model's {n_layers} layers (use 0..{n_layers - 1} or -1)")
    prepared = prepare_input(loaded, prompt, image, system=system, raw=raw)
    start_position = prepared.input_ids.shape[1]
    observer = _OverTrust(tracer.layout, layer=layer % n_layers, start=start_position, window=window,
                          scale=float(scale), image_positions=prepared.image_positions())
    tokens = []

    def on_token(step: int, token_id: int, _logits) -> None:
        tokens.append({"step": step, "position": start_position + step, "id": token_id,
                       "text": loaded.tokenizer.decode([token_id])})

    began = time.perf_counter()
    with torch.inference_mode(), tracer.editing(observer):
        first, feed = tracer.decoder(forward_inputs(loaded, prepared.input_ids, prepared.model_inputs))
        greedy(first, feed, max_new_tokens=max_new_tokens, eos=eos_ids(loaded), continuation=continuation,
               feed_last=True, on_token=on_token)
    scores = observer.scores[: len(tokens)]
    summary = np.array([column for _, column in scores], dtype=np.int64)
    retrospection = np.array([_rolls_back(summary[: step + 1], start_position, threshold)
                              for step in range(len(summary))], dtype=bool)
    options = {"layer": layer % n_layers, "scale": scale, "window": window, "threshold": threshold,
               "heads": "max over heads, row renormalised", "teacher_forced": continuation is not None,
               "max_new_tokens": max_new_tokens}
    return OperaResult(model=loaded.name, options=options, prompt=prompt, tokens=tuple(tokens),
                       log10_score=np.array([score for score, _ in scores], dtype=np.float64), summary=summary,
                       retrospection=retrospection,
                       image_attention=np.array(observer.image_attention[: len(tokens)], dtype=np.float64),
                       cost={"seconds": round(time.perf_counter() - began, 4), "forwards": len(tokens) + 1})


def _rolls_back(summaries: np.ndarray, start: int, threshold: int) -> bool:
    """The reference's trigger: the current summary column was the argmax more than `threshold` times so far and is
    not one of the response's first 10 tokens."""
    current = int(summaries[-1])
    return current - start >= EARLY_TOKENS and int((summaries == current).sum()) > threshold


def check_options(*, scale: float, window: int | None, threshold: int) -> None:
    """Refuse option values the score has no meaning for (before any model work)."""
    if not (isinstance(scale, (int, float)) and math.isfinite(scale) and scale > 0):
        raise InputError(f"--scale must be a positive number, not {scale!r}")
    if window is not None and window < 1:
        raise InputError(f"--window must be at least 1 token, not {window}")
    if threshold < 0:
        raise InputError(f"--threshold must be 0 or more, not {threshold}")


def analyse(trace, *, tracer, image=None, layer: int = -1, scale: float = 50.0, window: int | None = None,
            threshold: int = 15) -> OperaResult:
    """OPERA scores of a traced generation, teacher-forced on its generated tokens (needs the model: `tracer`)."""
    inputs = trace.meta["inputs"]
    generated = [t.id for t in trace.tokens[trace.generation["start"]:trace.generation["end"]]]
    if not generated:
        raise InputError("the trace generated no tokens; trace with --max-new-tokens N")
    from workbench.analyses.tracing import traced_image

    image = traced_image(trace, image)
    return opera(tracer, inputs["prompt"], image, continuation=generated, layer=layer, scale=scale, window=window,
                 threshold=threshold, system=inputs.get("system"), raw=inputs.get("raw", False))
