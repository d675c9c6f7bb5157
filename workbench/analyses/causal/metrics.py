"""The metric of a causal experiment and the prompt pairs it is measured on.

A metric reads the logits of the last row (the prediction of the token after the prompt):
- "logit-diff": logit[answer] - logit[distractor] (e.g. IOI: the indirect object's name minus the subject's);
- "logprob": log softmax(logits)[answer].
Values are float64; the mean over pairs is taken before normalising, as in the IOI literature.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal

import torch

from workbench.errors import InputError

MetricKind = Literal["logit-diff", "logprob"]
METRICS = ("logit-diff", "logprob")


@dataclass(frozen=True)
class Pair:
    """A clean prompt, its corrupted version (None for ablation without a baseline), and the answer tokens as
    text (each must be one token of the model; " Mark" with its leading space for a word inside a sentence)."""

    clean: str
    corrupted: str | None
    answer: str
    distractor: str | None = None

    def to_json(self) -> dict:
        return {"clean": self.clean, "corrupted": self.corrupted, "answer": self.answer, "distractor": self.distractor}


def check_metric(kind: str, pairs: Iterable[Pair]) -> None:
    """Model-independent checks, before anything loads."""
    if kind not in METRICS:
        raise InputError(f"the metric must be one of {', '.join(METRICS)}, not {kind!r}")
    for pair in pairs:
        if not pair.clean or not pair.clean.strip():
            raise InputError("a clean prompt is empty")
        if not pair.answer:
            raise InputError(f"no answer token for {pair.clean[:40]!r}; pass --answer (and --distractor)")
        if kind == "logit-diff" and not pair.distractor:
            raise InputError(f"the logit-diff metric needs a distractor token for {pair.clean[:40]!r}; pass "
                             "--distractor (or use --metric logprob)")


def swapped(record: dict) -> str:
    """The corrupted prompt of an IOI-style record without one: its two names swapped everywhere ("When Mary and
    Mark ..., Mark gave ... to"), which flips the answer and keeps the token count of single-token names."""
    io, s = record["io"], record["s"]
    marker = "\0"
    return record["prompt"].replace(io, marker).replace(s, io).replace(marker, s)


def pair_from_record(record: dict, *, answer: str | None = None, distractor: str | None = None) -> Pair:
    """A Pair from a JSONL record {prompt | clean, corrupted?, answer?, distractor?, io?, s?}: without "corrupted",
    a record naming "io" and "s" (data/prompts/ioi.jsonl) is corrupted by swapping the two names."""
    clean = record.get("clean", record.get("prompt"))
    corrupted = record.get("corrupted")
    if corrupted is None and record.get("io") and record.get("s"):
        corrupted = swapped({**record, "prompt": clean})
    if not isinstance(clean, str) or (corrupted is not None and not isinstance(corrupted, str)):
        raise InputError("each pair needs a text 'prompt' (or 'clean') and may have a text 'corrupted'")
    return Pair(clean, corrupted, record.get("answer", answer), record.get("distractor", distractor))


def token_id(tokenizer, text: str) -> int:
    """The one token id of `text` (no special tokens added); a text of several tokens is a user error."""
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    if len(ids) != 1:
        shown = [tokenizer.decode([i]) for i in ids]
        raise InputError(f"the answer {text!r} is {len(ids)} tokens for this model ({shown}); give one token (a word "
                         "inside a sentence usually needs its leading space)")
    return int(ids[0])


@dataclass(frozen=True)
class Metric:
    """A metric bound to token ids: `value(logits [batch, vocab]) -> [batch]` (float64)."""

    kind: MetricKind
    answer: int
    distractor: int | None = None

    @classmethod
    def of(cls, kind: MetricKind, tokenizer, pair: Pair) -> Metric:
        return cls(kind, token_id(tokenizer, pair.answer),
                   token_id(tokenizer, pair.distractor) if kind == "logit-diff" else None)

    def value(self, logits: torch.Tensor) -> torch.Tensor:
        logits = logits.double()
        if self.kind == "logit-diff":
            return logits[:, self.answer] - logits[:, self.distractor]
        return torch.log_softmax(logits, -1)[:, self.answer]


def normalised(edited, clean: float, corrupted: float):
    """(edited - corrupted) / (clean - corrupted): 1 = the clean run's metric, 0 = the corrupted one's; NaN where
    the two runs do not differ (nothing to normalise by)."""
    span = clean - corrupted
    if abs(span) < 1e-12:
        return edited * float("nan")
    return (edited - corrupted) / span
