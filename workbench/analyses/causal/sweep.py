"""The forwards of ablation and patching: token ids of a prompt, a recorded run, and a batched sweep in which batch
row b of B copies of one input carries its own activation replacements (`interventions.activations`)."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from workbench.capture.inputs import prepare_input
from workbench.interventions.activations import ActivationEdits, Replacement

Progress = Callable[[int, int], None]


def token_ids(tracer, text: str) -> torch.Tensor:
    """[1, query_pos] token ids of `text` fed as is (no chat template; the tokenizer's own BOS, if any)."""
    return prepare_input(tracer.loaded, text, raw=True).input_ids


def recorded(tracer, ids: torch.Tensor) -> tuple[torch.Tensor, ActivationEdits]:
    """(last-row logits [1, vocab], the run's recorded head outputs and residual streams) of one plain forward."""
    edits = ActivationEdits(tracer.layout, record=True)
    logits = tracer.last_logits(ids, edit=edits)
    return logits, edits


def sweep(tracer, ids: torch.Tensor, rows: Sequence[Sequence[Replacement]], metric, *, batch_size: int = 8,
          progress: Progress | None = None, done: int = 0, total: int | None = None) -> torch.Tensor:
    """metric [len(rows)] (float64) of the input `ids` [1, query_pos] run once per entry of `rows`, each with its
    replacements, `batch_size` runs per forward. progress(done + runs so far, total) after each forward."""
    values = []
    total = total if total is not None else done + len(rows)
    for start in range(0, len(rows), batch_size):
        chunk = rows[start:start + batch_size]
        edits = ActivationEdits(tracer.layout)
        edits.rows = list(chunk)
        logits = tracer.last_logits(ids.expand(len(chunk), -1), edit=edits)
        values.append(metric.value(logits))
        if progress is not None:
            progress(done + start + len(chunk), total)
    return torch.cat(values) if values else torch.zeros(0, dtype=torch.float64)
