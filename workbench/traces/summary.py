"""Per-layer x head summaries of a trace's statistics, and the JSON export built from them.

Every number comes from `workbench.traces.metrics` (alpha, sinks, region shares, the Lookback ratio), so the
export agrees with sweeps, the app and the probe features.
"""

from __future__ import annotations

import torch

from workbench.traces import metrics
from workbench.traces.tokens import REGIONS


def layer_summary(stats: dict[str, torch.Tensor], regions_present: list[int], generated_rows: torch.Tensor,
                  span_names: list[str] | None = None) -> dict:
    """One layer's entry of the export; `generated_rows` are the rows that predicted generated tokens; span_names:
    the trace's user spans (their shares are exported like the regions' where the layer stores span_mass)."""
    key_mass, region_count = stats["key_mass"].double(), stats["region_count"]
    alpha = metrics.alpha(key_mass, stats["key_count"])
    sinks = metrics.sink_mask(alpha)
    total_by_key = key_mass.sum(0)
    top_key = int(total_by_key.argmax())
    region_mass, entropy = stats["region_mass"], stats["entropy"]
    shares = metrics.region_shares(region_mass, region_count)  # [head, region]
    entropy_mean = metrics.mean_over_rows(entropy, region_count)  # [head]
    if len(generated_rows):
        generated_shares = metrics.region_shares(region_mass, region_count, generated_rows)
        lookback = metrics.mean_lookback_ratio(region_mass, region_count, generated_rows)
    heads = []
    for head in range(key_mass.shape[0]):
        entry = {
            "head": head,
            "alpha_first": round(float(alpha[head, 0]), 6),
            "max_alpha_key": int(alpha[head].argmax()),
            "sink_keys": sinks[head].nonzero().flatten().tolist()[:8],
            "top_key": int(key_mass[head].argmax()),
            "entropy_mean": round(float(entropy_mean[head]), 6),
            "region_share": {REGIONS[r]: round(float(shares[head, r]), 6) for r in regions_present},
        }
        if len(generated_rows):
            entry["generated_rows_region_share"] = {
                REGIONS[r]: round(float(generated_shares[head, r]), 6) for r in regions_present
            }
            entry["generated_rows_lookback_ratio"] = round(float(lookback[head]), 6)
        if span_names and "span_mass" in stats:
            entry["span_share"] = _span_shares(stats, span_names, head, None)
            if len(generated_rows):
                entry["generated_rows_span_share"] = _span_shares(stats, span_names, head, generated_rows)
        heads.append(entry)
    return {
        "top_key": top_key,
        "top_key_share": round(float(total_by_key[top_key] / total_by_key.sum().clamp_min(1e-30)), 6),
        "entropy_mean": round(float(entropy_mean.mean()), 6),
        "heads": heads,
    }


def _span_shares(stats: dict, names: list[str], head: int, rows) -> dict[str, float]:
    """{span name: mean over query rows of the row's attention mass on the span} of one head."""
    shares = metrics.mean_over_rows(stats["span_mass"][head:head + 1], stats["region_count"], rows)[0]
    return {name: round(float(share), 6) for name, share in zip(names, shares)}


def stack_summary(trace, stack: str) -> list[dict]:
    if stack == "text":
        regions = trace.regions
        generated_rows = metrics.predicting_rows(trace)
    else:
        regions = torch.tensor([REGIONS.index("special"), REGIONS.index("image")])
        generated_rows = torch.zeros(0, dtype=torch.long)
    present = sorted(set(regions.tolist()))
    layers = []
    for layer in range(trace.n_layers(stack)):
        stats = trace.layer(layer, stack)
        if "key_mass" in stats:
            spans = [span["name"] for span in trace.meta.get("inputs", {}).get("spans") or []] if stack == "text" else None
            layers.append({"layer": layer, **layer_summary(stats, present, generated_rows, spans)})
    return layers


def export_json(trace) -> dict:
    """Manifest metadata + tokens + summaries + analysis results; raw maps are never included."""
    from workbench.traces.schema import SCHEMA_VERSION

    return {
        "schema_version": SCHEMA_VERSION,
        "model": trace.model,
        "inputs": trace.meta["inputs"],
        "generation": trace.generation,
        "dims": trace.dims,
        "capture": trace.meta.get("capture", {}),
        "checks": trace.checks,
        "regions": list(REGIONS),
        "tokens": [token.to_json() for token in trace.tokens],
        "summary": {stack: stack_summary(trace, stack) for stack in trace.stacks},
        "results": trace.results,
    }
