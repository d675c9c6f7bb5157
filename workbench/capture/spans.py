"""User-named spans of the prompt (documents, list items, a question) that the statistics measure like regions.

A span is a character range of the user's prompt, given as `NAME=START:END`, found between markers
(`<doc>`...`</doc>`), or listed per line of a prompt set (`"spans": [{"name": ..., "start": ..., "end": ...}]`).
It covers the tokens whose characters lie mostly inside it. Spans of one trace must not overlap one another,
but they do overlap the fixed regions (a span of the prompt is inside the "prompt" region).

How they reach the statistics without a second pass: every key carries one *cell* id, its region and its span
(or "no span") together, `cell = region * (n_spans + 1) + span`. The kernels accumulate mass and counts per
cell exactly as they do per region (the one-pass kernel reads the cells as runs of equal id: a span adds two run
boundaries); `split_cells` then sums the cells back into the five region columns and the span columns. So the
extra memory is O(query_pos * region * spans) per head for one layer at a time, never a [query_pos, key_pos] map.
"""

from __future__ import annotations

import bisect
import re
from dataclasses import dataclass
from itertools import pairwise

import torch

from workbench.errors import InputError

MAX_SPANS = 256  # more spans than this is a dataset, not a prompt: cells (region x span) grow with them
_NAME = re.compile(r"[A-Za-z0-9_.-]{1,64}")


@dataclass(frozen=True)
class CharSpan:
    """A named character range [start, end) of the user's prompt."""

    name: str
    start: int
    end: int

    def to_json(self) -> dict:
        return {"name": self.name, "start": self.start, "end": self.end}


@dataclass(frozen=True)
class TokenSpans:
    """Spans placed on the tokens of one input: names, their character ranges and token ranges, and the span id of
    every prompt position (len(names) where a token is in no span)."""

    spans: tuple[CharSpan, ...]
    token_ranges: tuple[tuple[int, int], ...]  # [first, last + 1) token position of each span
    ids: torch.Tensor  # [key_pos] long

    @property
    def names(self) -> list[str]:
        return [span.name for span in self.spans]

    def to_json(self) -> list[dict]:
        """What the manifest stores under inputs.spans."""
        return [{**span.to_json(), "tokens": list(tokens)} for span, tokens in zip(self.spans, self.token_ranges)]


# -- specifications (model-independent: checked before any weights load) -------------------------------------
def parse_span_option(text: str) -> CharSpan:
    """`NAME=START:END` (characters of the prompt, END exclusive) -> CharSpan; one-line InputError otherwise."""
    match = re.fullmatch(r"([^=]*)=(-?[0-9]{1,12}):(-?[0-9]{1,12})", text.strip())
    if match is None:
        raise InputError(f"--span {text[:40]!r} is not NAME=START:END (character offsets in the prompt, e.g. doc1=0:120)")
    return CharSpan(match[1], int(match[2]), int(match[3]))


def marker_spans(prompt: str, markers: str) -> list[CharSpan]:
    """The texts between each OPEN and the next CLOSE marker (`markers` = "OPEN,CLOSE", e.g. "<doc>,</doc>"),
    named item_0, item_1, ... in order; the markers themselves stay in the prompt and in no span."""
    parts = markers.split(",")
    if len(parts) != 2 or not all(part.strip() for part in parts):
        raise InputError(f"--span-markers {markers[:40]!r} is not OPEN,CLOSE (e.g. '<doc>,</doc>')")
    opening, closing = (part.strip() for part in parts)
    spans, cursor = [], 0
    while (start := prompt.find(opening, cursor)) >= 0:
        start += len(opening)
        end = prompt.find(closing, start)
        if end < 0:
            raise InputError(f"--span-markers: the {opening!r} at character {start - len(opening)} is never closed "
                             f"by {closing!r}")
        again = prompt.find(opening, start, end)
        if again >= 0:
            raise InputError(f"--span-markers: the {opening!r} at character {start - len(opening)} is opened again at "
                             f"{again} before its {closing!r}; items cannot nest")
        spans.append(CharSpan(f"item_{len(spans)}", start, end))
        cursor = end + len(closing)
    if not spans:
        raise InputError(f"--span-markers: the prompt holds no {opening!r} ... {closing!r}")
    return spans


def spans_from_json(value, where: str) -> list[CharSpan]:
    """A prompt line's "spans" field: a list of {"name", "start", "end"} objects."""
    if not isinstance(value, list):
        raise InputError(f'{where}: field "spans" must be a list of {{"name", "start", "end"}} objects')
    spans = []
    for k, entry in enumerate(value):
        ok = isinstance(entry, dict) and set(entry) == {"name", "start", "end"} and isinstance(entry["name"], str) \
            and all(isinstance(entry[key], int) and not isinstance(entry[key], bool) for key in ("start", "end"))
        if not ok:
            raise InputError(f'{where}: field "spans" entry {k} must be {{"name": str, "start": int, "end": int}}')
        spans.append(CharSpan(entry["name"], entry["start"], entry["end"]))
    return spans


def check_spans(spans: list[CharSpan], prompt: str, *, what: str = "--span") -> list[CharSpan]:
    """Spans sorted by start if their names are valid and unique and they are non-empty, inside the prompt and
    pairwise disjoint; one-line InputError otherwise."""
    if len(spans) > MAX_SPANS:
        raise InputError(f"{what}: {len(spans)} spans, more than the {MAX_SPANS} a trace can hold")
    seen = set()
    for span in spans:
        if not _NAME.fullmatch(span.name):
            raise InputError(f"{what}: span name {span.name[:40]!r} must be 1-64 letters, digits, '_', '.' or '-'")
        if span.name in seen:
            raise InputError(f"{what}: span name {span.name!r} is given twice")
        seen.add(span.name)
        if not 0 <= span.start < span.end <= len(prompt):
            raise InputError(f"{what}: span {span.name!r} = {span.start}:{span.end} must satisfy 0 <= START < END <= "
                             f"{len(prompt)} (the prompt's length in characters)")
    ordered = sorted(spans, key=lambda span: span.start)
    for left, right in pairwise(ordered):
        if right.start < left.end:
            raise InputError(f"{what}: spans {left.name!r} and {right.name!r} overlap; spans must be disjoint")
    return ordered


# -- placing spans on tokens ---------------------------------------------------------------------------------
def locate_spans(spans: list[CharSpan], *, offsets: list, text: str, prompt: str, n_positions: int) -> TokenSpans:
    """Each span's tokens: those with more than half of their characters inside it (spans are disjoint, so at most
    one span qualifies). offsets: the tokenizer's (start, end) characters of every position in `text`, the rendered
    input that holds the prompt (its last occurrence, as the region labels read it). A span that covers no token is
    an InputError."""
    base = text.rfind(prompt)
    if base < 0:
        raise InputError("spans need the prompt's text in the model input; this template rewrote it (try --raw)")
    order = sorted(range(len(spans)), key=lambda index: spans[index].start)
    starts = [base + spans[index].start for index in order]
    ids = torch.full((n_positions,), len(spans), dtype=torch.long)
    for position, (start, end) in enumerate(offsets):
        # more than half of [start, end) inside a span puts the token's midpoint inside it: one bisect finds it
        found = bisect.bisect_right(starts, (start + end) / 2) - 1
        if found < 0 or end <= start:
            continue
        span = spans[order[found]]
        overlap = min(end, base + span.end) - max(start, base + span.start)
        if overlap * 2 > end - start:
            ids[position] = order[found]
    ranges = []
    for index, span in enumerate(spans):
        positions = torch.nonzero(ids == index).flatten()
        if not len(positions):
            raise InputError(f"span {span.name!r} ({span.start}:{span.end}) covers no whole token; widen it")
        ranges.append((int(positions[0]), int(positions[-1]) + 1))
    return TokenSpans(tuple(spans), tuple(ranges), ids)


# -- cells: region and span in one key id --------------------------------------------------------------------
def cell_ids(regions: torch.Tensor, span_ids: torch.Tensor, n_spans: int) -> torch.Tensor:
    """[key_pos] cell id region * (n_spans + 1) + span (span = n_spans: in no span)."""
    return regions.long() * (n_spans + 1) + span_ids.long()


def split_cells(values: torch.Tensor, n_regions: int, n_spans: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(per region [..., n_regions], per span [..., n_spans]) sums of per-cell values [..., n_regions * (n_spans + 1)]."""
    cells = values.reshape(*values.shape[:-1], n_regions, n_spans + 1)
    return cells.sum(-1), cells[..., :n_spans].sum(-2)
