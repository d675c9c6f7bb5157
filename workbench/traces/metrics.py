"""One definition of every quantity derived from a trace's statistics.

The JSON export, sweeps, the app and the probe features all call these functions, so a number means the
same thing wherever it is shown. Axis names follow the vocabulary in `workbench.traces`.

Positions: a causal language model predicts the token at position t from query row t - 1. Results that
refer to a generated token store the token's position; the row that predicts it is named
`predicting_row` wherever it is stored.

Quantities (inputs are a layer's statistics, torch tensors or numpy arrays; outputs are float64 tensors):
    alpha, sink_mask, sink_percent, SINK_EPSILON     Gu et al. 2025's attention sinks
    QUERY_ROWS, key_columns                          which query rows enter alpha (prompt rows by default)
    lookback_ratio, mean_lookback_ratio              Lookback Lens (Chuang et al. 2024), C / (C + N) per row
    lookback_ratio_reference                         the same in the released code's convention (header = new)
    span_lookback_ratio                              the same with the context narrowed to chosen user spans
    region_shares, mean_over_rows, seen_rows         per-row attention mass on each region, averaged over rows
    normalised_entropy                               row entropy / log(visible keys)
    predicting_row, predicted_position, predicting_rows   token position <-> the row that predicts it
"""

from __future__ import annotations

import torch

from workbench.traces.tokens import REGIONS


def predicting_row(token_position: int) -> int:
    """The query row whose output predicts the token at `token_position` (a causal LM's next-token row)."""
    if token_position < 1:
        raise ValueError(f"token position {token_position} has no predicting row: position 0 is never predicted")
    return token_position - 1


def predicted_position(row: int) -> int:
    """The position of the token that query row `row` predicts (inverse of `predicting_row`)."""
    return row + 1


def predicting_rows(trace) -> torch.Tensor:
    """[generated token] the query row that predicts each generated token, `predicting_row(p)` for every
    position p of the generation (Lookback Lens' rows); empty without a generation or without a prompt."""
    start, end = int(trace.generation.get("start", 0)), int(trace.generation.get("end", 0))
    if end <= start or start < 1:
        return torch.zeros(0, dtype=torch.long)
    return torch.arange(predicting_row(start), predicting_row(end - 1) + 1)


# ------------------------------------------------------------------------------------------------ sinks
SINK_EPSILON = 0.3
"""Gu et al. 2025's default threshold on alpha: a key is a sink of a head when its alpha exceeds it."""


def _f64(values) -> torch.Tensor:
    """float64 tensor view of a torch tensor or numpy array (the app holds numpy; the math is done once, here)."""
    return torch.as_tensor(values).double()


def alpha(key_mass, key_count) -> torch.Tensor:
    """alpha [head, key_pos] = key_mass / key_count: the mean attention a key receives from the queries that
    see it (Gu et al. 2025, "When Attention Sink Emerges in Language Models"). Inputs key_mass [head, key_pos]
    and key_count [key_pos]; a key no query sees gets 0. float64."""
    return _f64(key_mass) / _f64(key_count).clamp_min(1)


QUERY_ROWS = ("prompt", "all")
"""Query rows whose attention enters alpha: "prompt" (the default: the prompt's rows only, as Gu et al.'s
compute_attention_sink measures on the prompt forward) or "all" (the prompt's and the generated tokens' rows)."""


def key_columns(stats: dict, query_rows: str = "prompt", *, generated: bool) -> tuple | None:
    """(key_mass [head, key_pos], key_count [key_pos]) summed over the chosen query rows of one layer's
    statistics. `generated`: whether the trace has generated rows. Without them every row is a prompt row and
    key_mass / key_count are the prompt's sums; with them "prompt" reads prompt_key_mass / prompt_key_count,
    which the capture stores for that case. None when the statistics lack them (a bundle written before)."""
    if query_rows not in QUERY_ROWS:
        raise ValueError(f"query_rows must be one of {QUERY_ROWS}, not {query_rows!r}")
    if query_rows == "all" or not generated:
        return stats["key_mass"], stats["key_count"]
    if "prompt_key_mass" not in stats:
        return None
    return stats["prompt_key_mass"], stats["prompt_key_count"]


def sink_mask(alpha_values, eps: float = SINK_EPSILON) -> torch.Tensor:
    """alpha > eps, elementwise (same shape): where a key is a sink of a head (Gu et al.'s strict inequality)."""
    return torch.as_tensor(alpha_values) > eps


def sink_percent(alpha_values, eps: float = SINK_EPSILON) -> torch.Tensor:
    """Sink_k^eps [key_pos] from alpha [layer, head, key_pos]: 100 x the fraction of (layer, head) pairs in
    which key k is a sink, alpha_k > eps (Gu et al. 2025; one input is one sample: average over inputs for
    their dataset-level figure). float64."""
    return 100.0 * sink_mask(alpha_values, eps).double().mean((0, 1))


# ------------------------------------------------------------------------------------------ query rows
def seen_rows(region_count) -> torch.Tensor:
    """[query_pos] bool: rows that see at least one key (every row of a causal or bidirectional stack)."""
    return _f64(region_count).sum(-1) > 0


def mean_over_rows(values, region_count, rows=None) -> torch.Tensor:
    """Mean over query rows of per-row values [head, query_pos, ...] -> [head, ...], counting only rows that see
    a key, and of those only `rows` (indices) when given; NaN when no row is left. float64."""
    values, keep = _f64(values), seen_rows(region_count)
    if rows is not None:
        chosen = torch.zeros_like(keep)
        chosen[torch.as_tensor(rows, dtype=torch.long)] = True
        keep = keep & chosen
    return values[:, keep].mean(1)


def region_shares(region_mass, region_count, rows=None) -> torch.Tensor:
    """[head, region] mean over query rows of each row's attention mass on each region. A row's share of region
    r is region_mass[head, row, r] itself (its rows sum to 1). Rows as in `mean_over_rows`: all rows that see a
    key, or only `rows` (e.g. `predicting_rows(trace)`, the JSON's `generated_rows_region_share`)."""
    return mean_over_rows(region_mass, region_count, rows)


def normalised_entropy(entropy, region_count) -> torch.Tensor:
    """[head, query_pos] row entropy / log(keys the row sees): 0 = all attention on one key, 1 = uniform.
    A row that sees one key (or none) gets 0, the entropy of a one-key row."""
    visible = _f64(region_count).sum(-1)  # [query_pos]
    return torch.where(visible > 1, _f64(entropy) / visible.clamp_min(2).log(), 0.0)


# ------------------------------------------------------------------------------------------ Lookback Lens
GENERATED = REGIONS.index("generated")
CONTEXT_REGIONS: tuple[str, ...] = tuple(region for region in REGIONS if region != "generated")
"""The default context of the Lookback ratio: every key that is not generated (the whole input before the
response, as in Lookback Lens' released code)."""
LOOKBACK_UNDEFINED = 0.5
"""The Lookback ratio of a row with C + N = 0 (no attention on either key set, e.g. a row that sees neither a
context key of the chosen set nor a generated key). The reference code never meets this case (its new-token
set always holds the response header, and softmax weights are positive), and it feeds every ratio to a logistic
regression, so the value must be finite; 0.5 is the ratio of C = N, favouring neither set."""


def _mean_per_key(mass: torch.Tensor, count: torch.Tensor) -> torch.Tensor:
    """Mean attention per key of a key set: its mass / its size; 0 for an empty set (no key, no mass)."""
    return torch.where(count > 0, mass / count.clamp_min(1), 0.0)


def lookback_ratio(region_mass, region_count, context: tuple[str, ...] = CONTEXT_REGIONS) -> torch.Tensor:
    """Lookback ratio [head, query_pos] of each row (Chuang et al. 2024, "Lookback Lens"): C / (C + N), where
    C = mean attention per context key (the regions named in `context`) and N = mean attention per generated
    key the row sees, both from region_mass [head, query_pos, region] / region_count [query_pos, region]
    (means per key, not summed mass). Index rows first to score only some (e.g. `predicting_rows(trace)`).

    Edge cases, one convention everywhere:
    - a row that sees no generated key (the row predicting the first generated token) has N = 0, so its ratio
      is 1 when it attends to the context at all. The reference code counts its response header
      ("\\n#Answer#:") among the new tokens instead: `lookback_ratio_reference`.
    - C + N = 0 gives `LOOKBACK_UNDEFINED` (0.5).
    float64."""
    mass, count = _f64(region_mass), _f64(region_count)
    ids = [REGIONS.index(name) for name in context]
    c = _mean_per_key(mass[..., ids].sum(-1), count[..., ids].sum(-1))
    n = _mean_per_key(mass[..., GENERATED], count[..., GENERATED])
    total = c + n
    return torch.where(total > 0, c / torch.where(total > 0, total, 1.0), LOOKBACK_UNDEFINED)


def span_lookback_ratio(region_mass, region_count, span_mass, span_count, spans) -> torch.Tensor:
    """Lookback ratio [head, query_pos] with the context narrowed to chosen user spans (`spans`: their column
    indices in span_mass [head, query_pos, span] / span_count [query_pos, span]): C = mean attention per key of the
    chosen spans, N = mean attention per generated key, C / (C + N); same edge cases as `lookback_ratio`. Asks
    whether generated rows look back at a particular document rather than at the whole input. float64."""
    spans = list(spans)
    c = _mean_per_key(_f64(span_mass)[..., spans].sum(-1), _f64(span_count)[..., spans].sum(-1))
    n = _mean_per_key(_f64(region_mass)[..., GENERATED], _f64(region_count)[..., GENERATED])
    total = c + n
    return torch.where(total > 0, c / torch.where(total > 0, total, 1.0), LOOKBACK_UNDEFINED)


def mean_lookback_ratio(region_mass, region_count, rows, context: tuple[str, ...] = CONTEXT_REGIONS
                        ) -> torch.Tensor:
    """[head] mean of `lookback_ratio` over query rows `rows` (the sweep's, app's and JSON's per-head value on
    the rows that predicted generated tokens); NaN when `rows` is empty."""
    rows = torch.as_tensor(rows, dtype=torch.long)
    return lookback_ratio(_f64(region_mass)[:, rows], _f64(region_count)[rows], context).mean(-1)


def lookback_ratio_reference(region_mass, region_count, header_mass, header_count) -> torch.Tensor:
    """Lookback ratio [head, query_pos] in the convention of Lookback Lens' released code (step01_extract_attns.py):
    the input splits by position at the response header, C = mean attention per key before it (the whole input
    but the header) and N = mean attention per key from the header on (the header's keys and the generated keys
    the row sees), ratio = C / (C + N). header_mass [head, query_pos] is each row's attention on the header's
    keys, header_count [query_pos] how many of them it sees (0 and 0 without a header).

    Undefined (NaN), as the reference's empty mean is: a row that sees no key from the header on (without a
    header, the row predicting the first generated token) and a row with C + N = 0. float64."""
    mass, count = _f64(region_mass), _f64(region_count)
    header_mass, header_count = _f64(header_mass), _f64(header_count)
    ids = [REGIONS.index(name) for name in CONTEXT_REGIONS]
    new_count = count[..., GENERATED] + header_count
    new = (mass[..., GENERATED] + header_mass) / torch.where(new_count > 0, new_count, 1.0)
    context_count = count[..., ids].sum(-1) - header_count
    context = (mass[..., ids].sum(-1) - header_mass) / torch.where(context_count > 0, context_count, 1.0)
    total = context + new
    ratio = context / torch.where(total > 0, total, 1.0)
    return torch.where((new_count > 0) & (total > 0), ratio, float("nan"))
