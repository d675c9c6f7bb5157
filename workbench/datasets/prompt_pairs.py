"""The prompt-pair format read by `workbench patch` and `workbench ablate --pairs`: one object per line,

    {"prompt": "When Mark and Mary went ..., Mary gave a drink to", "corrupted": "...", "answer": " Mark",
     "distractor": " Mary"}

`clean` is a synonym of `prompt`. Without `corrupted`, a line naming the indirect object `io` and the subject `s`
(data/prompts/ioi.jsonl) is corrupted by swapping the two names. Answers given on the command line fill in lines
without them. Every line is checked before anything loads (workbench/datasets/jsonl.py).
"""

from __future__ import annotations

from pathlib import Path

from workbench.datasets.jsonl import Field, read_records
from workbench.errors import InputError


def _non_empty(value: str) -> str | None:
    return "must not be empty" if not value.strip() else None


FIELDS = {
    "prompt": Field((str,), check=_non_empty),
    "clean": Field((str,), check=_non_empty),
    "corrupted": Field((str,), check=_non_empty),
    "answer": Field((str,), check=_non_empty),
    "distractor": Field((str,), check=_non_empty),
    "io": Field((str,), check=_non_empty),
    "s": Field((str,), check=_non_empty),
    "name": Field((str, int)),
    "id": Field((str, int)),
}


def read_pairs(path: Path, *, what: str = "--pairs", limit: int | None = None) -> list[dict]:
    """The first `limit` (all by default) lines of a pair file as dicts, each with a clean prompt."""
    records = read_records(path, FIELDS, what=what, extra="warn")
    for record in records:
        data = record.data
        if ("prompt" in data) == ("clean" in data):
            raise InputError(f"{record.where(Path(path))}: give the clean prompt as 'prompt' or 'clean' (one of them)")
        if "corrupted" not in data and ("io" in data) != ("s" in data):
            raise InputError(f"{record.where(Path(path))}: swapping names needs both 'io' and 's'")
    if not records:
        raise InputError(f"{what} {path} holds no pair")
    return [record.data for record in records[:limit]]
