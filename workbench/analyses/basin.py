"""Attention basin: how much attention each item of a list receives as a function of its place in the list.

Yi et al. 2025, "Attention Basin: Why Contextual Position Matters in Large Language Models": given structured
items (retrieved documents, few-shot examples), models give the items at the beginning and at the end of the list
more attention than those in the middle (a U shape over item positions). Here the items are the user spans of a
trace (`workbench trace --span / --span-markers`, stored as span_mass / span_count), so no n x n map is needed.

received[layer, head, item] = mean over the chosen query rows i of m_i(item), where m_i(item) is the attention
mass row i puts on the item's tokens (per="item"), or that mass divided by the item's tokens the row sees
(per="token": the mean weight of one token of the item, so long items do not win by length alone). Rows: those
after the last item ("after": the question and the answer, which see every item whole), or the generated rows.

u_score = (mean of the first and last items' attention - mean of the middle items') / mean over all items, per
layer and head and for the profile averaged over layers and heads: > 0 is a basin (both ends above the middle),
0 flat, < 0 a hill. It needs at least three items.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Literal

import numpy as np
import torch

from workbench.analyses.result import HeadMetric, Result, stored_version
from workbench.errors import InputError
from workbench.traces.names import tensor_name

__all__ = ["ROWS", "BasinResult", "analyse", "stored_spans", "u_score"]

METHOD = "Attention basin, Yi et al. 2025: attention received per list item vs its position (span statistics)"
ROWS = ("after", "generated")
PER = ("item", "token")


@dataclass(frozen=True)
class BasinResult(Result):
    """received [layer, head, item] attention per item (items in list order), the query rows it averages over
    ([start, end) token positions) and the U-scores (module docstring)."""

    analysis: ClassVar[str] = "basin"
    schema_version: ClassVar[int] = 1

    model: str
    options: dict
    items: tuple  # ({"name", "start", "end", "tokens": [first, last + 1]}, ...) in list order
    rows: tuple  # (start, end) query rows averaged
    received: np.ndarray  # [layer, head, item]

    @property
    def profile(self) -> np.ndarray:
        """[item] attention per item averaged over layers and heads."""
        return self.received.mean(axis=(0, 1))

    @property
    def layer_profile(self) -> np.ndarray:
        """[layer, item] attention per item averaged over heads."""
        return self.received.mean(axis=1)

    @property
    def u_score(self) -> float:
        return u_score(self.profile)

    @property
    def head_u_scores(self) -> np.ndarray:
        """[layer, head] U-score of every head's own profile."""
        return np.apply_along_axis(u_score, -1, self.received)

    def to_json(self) -> dict:
        return {"analysis": self.analysis, "schema_version": self.schema_version, "method": METHOD,
                "model": self.model, "options": self.options, "items": list(self.items), "rows": list(self.rows),
                "profile": _rounded(self.profile), "u_score": _finite(self.u_score),
                "layer_profile": _rounded(self.layer_profile),
                "layer_u_scores": [_finite(u_score(p)) for p in self.layer_profile],
                "received": _rounded(self.received), "head_u_scores": _rounded(self.head_u_scores)}

    @classmethod
    def from_json(cls, data: dict) -> BasinResult:
        stored_version(data, cls)
        return cls(model=str(data.get("model", "?")), options=dict(data.get("options") or {}),
                   items=tuple(data.get("items") or ()), rows=tuple(data.get("rows") or (0, 0)),
                   received=np.asarray(data["received"], dtype=np.float64))  # None -> NaN

    def head_metrics(self) -> dict[str, HeadMetric]:
        return {"basin_u_score": HeadMetric(self.head_u_scores, "U-score of attention over list items",
                                            "(ends - middle) / mean of the attention each list item receives "
                                            "(basin analysis)")}


def u_score(profile) -> float:
    """(mean(first, last) - mean(middle)) / mean(all) of an attention profile over >= 3 items (NaN if all zero)."""
    values = np.asarray(profile, dtype=np.float64)
    if values.shape[-1] < 3:
        raise ValueError(f"a U-score needs at least 3 items, got {values.shape[-1]}")
    mean = values.mean()
    if not mean > 0:
        return float("nan")
    return float(((values[0] + values[-1]) / 2 - values[1:-1].mean()) / mean)


def stored_spans(trace) -> list[dict]:
    """The user spans a trace was captured with (manifest inputs.spans), in list order; [] if none."""
    spans = trace.meta.get("inputs", {}).get("spans") or []
    return sorted(spans, key=lambda span: span["tokens"][0])


def analyse(trace, *, rows: Literal["after", "generated"] = "after", per: Literal["item", "token"] = "item",
            items: list[str] | None = None) -> BasinResult:
    """Attention received by each list item of `trace` (its user spans, or the named `items` among them) from the
    chosen query rows, per layer and head (module docstring).

    >>> import workbench
    >>> from workbench.capture.spans import marker_spans
    >>> prompt = "<d>one</d> <d>two</d> <d>three</d> Which?"
    >>> t = workbench.trace("tiny-llama", prompt, max_new_tokens=2, spans=marker_spans(prompt, "<d>,</d>"))
    >>> r = analyse(t)
    >>> r.received.shape, [item["name"] for item in r.items]
    ((3, 6, 3), ['item_0', 'item_1', 'item_2'])
    """
    if rows not in ROWS:
        raise InputError(f"rows takes {', '.join(ROWS)}, not {rows!r}")
    if per not in PER:
        raise InputError(f"per takes {', '.join(PER)}, not {per!r}")
    spans = stored_spans(trace)
    if not spans:
        raise InputError("this trace has no user spans; trace it with --span NAME=START:END (three or more) or "
                         "--span-markers OPEN,CLOSE to mark the list items")
    column = {span["name"]: k for k, span in enumerate(trace.meta["inputs"]["spans"])}  # stored order = columns
    chosen = spans if items is None else [_named(spans, name) for name in items]
    if len(chosen) < 3:
        raise InputError(f"the basin needs at least 3 list items; the trace has {len(chosen)} "
                         f"({', '.join(s['name'] for s in chosen)})")
    first, end = _query_rows(trace, rows, max(span["tokens"][1] for span in chosen))
    columns = [column[span["name"]] for span in chosen]
    n_layers, n_heads = trace.n_layers(), trace.n_heads()
    received = np.zeros((n_layers, n_heads, len(chosen)))
    for layer in range(n_layers):
        mass = trace.tensor(tensor_name("text", layer, "span_mass"))[:, first:end][..., columns].double()
        if per == "token":
            count = trace.tensor(tensor_name("text", layer, "span_count"))[first:end][..., columns].double()
            mass = torch.where(count > 0, mass / count.clamp_min(1), torch.zeros_like(mass))
        received[layer] = mass.mean(dim=1).numpy()
    options = {"rows": rows, "per": per, "items": None if items is None else list(items)}
    return BasinResult(model=trace.model.get("name", "?"), options=options, items=tuple(chosen), rows=(first, end),
                       received=received)


def _named(spans: list[dict], name: str) -> dict:
    for span in spans:
        if span["name"] == name:
            return span
    raise InputError(f"the trace has no span {name!r}; it has {', '.join(s['name'] for s in spans)}")


def _query_rows(trace, rows: str, after: int) -> tuple[int, int]:
    n = len(trace.tokens)
    first = trace.generation["start"] if rows == "generated" else after
    if first >= n:
        what = "no generated token" if rows == "generated" else "no token after the last item"
        raise InputError(f"the basin averages over query rows that see every item, and this trace has {what}; put "
                         "the question after the list" + (" or trace with --max-new-tokens" if rows == "generated"
                                                          else ""))
    return first, n


def _rounded(values: np.ndarray):
    """Nested lists of the values rounded to 8 digits, None where not finite (JSON has no NaN)."""
    if np.ndim(values) == 0:
        return _finite(float(values))
    return [_rounded(part) for part in values]


def _finite(value: float) -> float | None:
    return round(value, 8) if np.isfinite(value) else None
