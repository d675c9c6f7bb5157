"""Per (input, stack, layer, head) features and per-input summaries of one `Trace`, as Arrow rows.

Per head, from the trace's statistics (docs/trace-format.md), in float64, through `workbench.traces.metrics`:
    sink_score        alpha_0 = key_mass[h, 0] / key_count[0]: mean attention on position 0 over the queries
                      that see it (Gu et al. 2025); `sink` = sink_score > SINK_EPSILON (0.3, their epsilon)
    hidden_alpha, hidden_alpha_key   the largest alpha_k over k >= 1 and its position (ACT's hidden sinks
                      exclude token 0); null for a one-token input
    top_key           key receiving the most attention mass
    entropy_mean      mean attention entropy (nats) over query rows that see a key
    share_<region>    mean over those rows of the attention mass on each region (image share = share_image)
    gen_share_image   the same on the rows that predicted generated tokens (p - 1 for token p); null if none
    lookback_ratio    Lookback Lens (Chuang et al. 2024) on those rows: C / (C + N) with C, N the MEAN attention
                      per context key (every non-generated token) and per earlier generated key (N = 0 when
                      none is visible yet; 0.5 when C + N = 0); null without generation
    normaliser_error  max |Z - 1| over rows that see a key (the capture self-check)
"""

from __future__ import annotations

import math

import torch

from workbench.traces import metrics
from workbench.traces.tokens import REGIONS

HEAD_FLOATS = ("sink_score", "hidden_alpha", "entropy_mean", *(f"share_{r}" for r in REGIONS), "gen_share_image",
               "lookback_ratio", "normaliser_error")
HEAD_INTS = ("hidden_alpha_key", "top_key")


def head_schema():
    """Schema of one head row (without `index`/`id`, which the sweep adds)."""
    import pyarrow as pa

    return pa.schema([("stack", pa.string()), ("layer", pa.int32()), ("head", pa.int32()), ("sink", pa.bool_()),
                      *[(name, pa.float64()) for name in HEAD_FLOATS], *[(name, pa.int64()) for name in HEAD_INTS]])


def input_schema():
    import pyarrow as pa

    return pa.schema([
        ("index", pa.int64()), ("id", pa.string()), ("prompt", pa.string()), ("image", pa.string()),
        ("n_tokens", pa.int64()), ("n_prompt_tokens", pa.int64()), ("n_generated", pa.int64()),
        ("generated_text", pa.string()), *[(f"tokens_{r}", pa.int64()) for r in REGIONS],
        ("healthy", pa.bool_()), ("max_normaliser_error", pa.float64()), ("mean_prediction_entropy", pa.float64()),
        ("seconds", pa.float64()), ("bundle", pa.string()), ("error", pa.string()),
    ])


def _nullable(value: float):
    return None if value is None or math.isnan(value) else float(value)


def layer_head_rows(stats: dict[str, torch.Tensor], generated_rows: torch.Tensor) -> list[dict]:
    """Feature rows of every head of one layer (see the module docstring)."""
    key_mass = stats["key_mass"].double()
    region_mass, region_count = stats["region_mass"], stats["region_count"]
    normaliser = stats["normaliser"].double()
    n_heads, n = key_mass.shape
    alpha = metrics.alpha(key_mass, stats["key_count"])
    sink = metrics.sink_mask(alpha[:, 0])
    seen = metrics.seen_rows(region_count)  # [query_pos]
    shares = metrics.region_shares(region_mass, region_count)  # [head, region]
    entropy_mean = metrics.mean_over_rows(stats["entropy"], region_count)
    error = (normaliser[:, seen] - 1).abs().amax(1) if seen.any() else torch.zeros(n_heads, dtype=torch.float64)
    gen = generated_rows[generated_rows < region_mass.shape[1]]
    if len(gen):
        gen_image = metrics.region_shares(region_mass, region_count, gen)[:, REGIONS.index("image")]
        lookback = metrics.mean_lookback_ratio(region_mass, region_count, gen)
    if n > 1:
        hidden_value, hidden_key = alpha[:, 1:].max(1)
    rows = []
    for head in range(n_heads):
        rows.append({
            "head": head,
            "sink": bool(sink[head]),
            "sink_score": float(alpha[head, 0]),
            "hidden_alpha": float(hidden_value[head]) if n > 1 else None,
            "hidden_alpha_key": int(hidden_key[head]) + 1 if n > 1 else None,
            "top_key": int(key_mass[head].argmax()),
            "entropy_mean": _nullable(float(entropy_mean[head])),
            **{f"share_{region}": _nullable(float(shares[head, r])) for r, region in enumerate(REGIONS)},
            "gen_share_image": float(gen_image[head]) if len(gen) else None,
            "lookback_ratio": _nullable(float(lookback[head])) if len(gen) else None,
            "normaliser_error": float(error[head]),
        })
    return rows


def head_rows(trace) -> list[dict]:
    """Feature rows of every (stack, layer, head) of a trace."""
    rows = []
    for stack in trace.stacks:
        # The vision tower ([CLS] then patches) has no generated rows.
        generated = metrics.predicting_rows(trace) if stack == "text" else torch.zeros(0, dtype=torch.long)
        for layer in range(trace.n_layers(stack)):
            stats = trace.layer(layer, stack)
            if "key_mass" not in stats:
                continue
            for row in layer_head_rows(stats, generated):
                rows.append({"stack": stack, "layer": layer, **row})
    return rows


def input_row(item, trace, *, seconds: float, bundle: str | None) -> dict:
    """The per-input summary of a traced input."""
    counts = {region: 0 for region in REGIONS}
    for token in trace.tokens:
        counts[token.region] += 1
    entropy = trace.tensor("outputs.prediction_entropy").double()
    finite = entropy[torch.isfinite(entropy)]
    return {
        "index": item.index, "id": item.id, "prompt": item.prompt, "image": item.image,
        "n_tokens": len(trace.tokens), "n_prompt_tokens": trace.generation["start"],
        "n_generated": trace.generation["end"] - trace.generation["start"], "generated_text": trace.generation["text"],
        **{f"tokens_{region}": count for region, count in counts.items()},
        "healthy": bool(trace.checks.get("healthy", True)),
        "max_normaliser_error": float(trace.checks.get("max_normaliser_error", 0.0)),
        "mean_prediction_entropy": float(finite.mean()) if len(finite) else None,
        "seconds": seconds, "bundle": bundle, "error": None,
    }


def error_row(item, message: str, *, seconds: float) -> dict:
    """The per-input summary of an input that could not be traced (it is not retried on resume)."""
    row = {name: None for name in input_schema().names}
    row.update({"index": item.index, "id": item.id, "prompt": item.prompt, "image": item.image, "seconds": seconds,
                "error": message})
    return row
