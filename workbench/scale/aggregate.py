"""Aggregate tables of a finished sweep, computed from the committed per-head rows (so they are the same
whichever executor or how many resumes produced the rows: rows are sorted before any sum).

aggregates/heads.parquet, one row per (stack, layer, head):
    n_inputs, sink_score_mean, sink_rate (Gu et al.'s Sink^eps: 100 x fraction of inputs with alpha_0 > 0.3),
    hidden_alpha_mean, entropy_mean, share_<region>_mean (share_image_mean = image share),
    gen_share_image_mean, lookback_ratio_mean (nulls, e.g. no generation, are skipped), normaliser_error_max
aggregates/layers.parquet: the same means per (stack, layer) over heads and inputs.
"""

from __future__ import annotations

from workbench.traces.tokens import REGIONS

MEANS = ("sink_score", "hidden_alpha", "entropy_mean", *(f"share_{r}" for r in REGIONS), "gen_share_image",
         "lookback_ratio")


def _aggregate(heads, keys: list[str]):
    import pyarrow as pa
    import pyarrow.compute as pc

    table = heads.append_column("sink_pct", pc.multiply(pc.cast(heads.column("sink"), pa.float64()), 100.0))
    specs = [("index", "count_distinct"), ("sink_pct", "mean"), ("normaliser_error", "max")]
    specs += [(name, "mean") for name in MEANS]
    grouped = table.group_by(keys, use_threads=False).aggregate(specs)
    renames = {"index_count_distinct": "n_inputs", "sink_pct_mean": "sink_rate",
               "normaliser_error_max": "normaliser_error_max", "entropy_mean_mean": "entropy_mean"}
    names = [renames.get(name, name) for name in grouped.column_names]
    grouped = grouped.rename_columns(names)
    return grouped.sort_by([(key, "ascending") for key in keys])


def aggregate_heads(heads):
    """Per (stack, layer, head) aggregates of a sorted per-head table."""
    return _aggregate(heads, ["stack", "layer", "head"])


def aggregate_layers(heads):
    """Per (stack, layer) aggregates of a sorted per-head table."""
    return _aggregate(heads, ["stack", "layer"])
