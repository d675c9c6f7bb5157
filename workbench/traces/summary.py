"""Per-layer x head summaries of a trace's statistics, and the JSON export built from them."""

from __future__ import annotations

import torch

from workbench.traces.tokens import REGIONS

SINK_EPSILON = 0.3  # Gu et al.'s default threshold on alpha_k


def head_alpha(key_mass: torch.Tensor, key_count: torch.Tensor) -> torch.Tensor:
    """alpha[head, key_pos]: mean attention a key receives from the queries that see it (Gu et al. 2025)."""
    return key_mass / key_count.clamp_min(1).to(key_mass.dtype)


def layer_summary(stats: dict[str, torch.Tensor], regions_present: list[int], generated_rows: torch.Tensor) -> dict:
    key_mass, key_count = stats["key_mass"].float(), stats["key_count"]
    alpha = head_alpha(key_mass, key_count)
    total_by_key = key_mass.sum(0)
    top_key = int(total_by_key.argmax())
    region_mass, entropy = stats["region_mass"].float(), stats["entropy"].float()
    heads = []
    for head in range(key_mass.shape[0]):
        sinks = (alpha[head] > SINK_EPSILON).nonzero().flatten().tolist()
        entry = {
            "head": head,
            "alpha_first": round(float(alpha[head, 0]), 6),
            "max_alpha_key": int(alpha[head].argmax()),
            "sink_keys": sinks[:8],
            "top_key": int(key_mass[head].argmax()),
            "entropy_mean": round(float(entropy[head].mean()), 6),
            "region_share": {REGIONS[r]: round(float(region_mass[head, :, r].mean()), 6) for r in regions_present},
        }
        if len(generated_rows):
            entry["generated_rows_region_share"] = {
                REGIONS[r]: round(float(region_mass[head, generated_rows, r].mean()), 6) for r in regions_present
            }
        heads.append(entry)
    return {
        "top_key": top_key,
        "top_key_share": round(float(total_by_key[top_key] / total_by_key.sum().clamp_min(1e-30)), 6),
        "entropy_mean": round(float(entropy.mean()), 6),
        "heads": heads,
    }


def stack_summary(trace, stack: str) -> list[dict]:
    if stack == "text":
        regions = trace.regions
        generated_rows = (regions == REGIONS.index("generated")).nonzero().flatten()
        # The row predicting the first generated token is the last prompt row: include it.
        if len(generated_rows):
            generated_rows = torch.cat([generated_rows[:1] - 1, generated_rows[:-1]])
    else:
        regions = torch.tensor([REGIONS.index("special"), REGIONS.index("image")])
        generated_rows = torch.zeros(0, dtype=torch.long)
    present = sorted(set(regions.tolist()))
    layers = []
    for layer in range(trace.n_layers(stack)):
        stats = trace.layer(layer, stack)
        if "key_mass" in stats:
            layers.append({"layer": layer, **layer_summary(stats, present, generated_rows)})
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
