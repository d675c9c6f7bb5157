"""Per-(layer, head) metrics computed from a bundle's statistics (no maps needed), for the Model view.

Every metric is a [layer, head] float array; the quantities come from `workbench.traces.metrics`, the one
definition the JSON export, sweeps and probes also use. Conventions (docs/app.md repeats them):
- sink: Gu et al. 2025 alpha of position 0 = key_mass[h, 0] / key_count[0] (mean attention position 0
  receives from the queries that see it), over every query row, generated ones included; the sinks analysis
  (results/sinks.json) defaults to the prompt rows, as Gu et al.'s reference code, and its labels say so.
- entropy: mean over query rows (that see at least one key) of the row's attention entropy, nats.
- entropy_norm: the same divided by log(number of visible keys), rows seeing one key excluded: 0 = one key,
  1 = uniform; comparable across positions and lengths.
- share:<region>: mean over rows of the attention mass on keys of that region (as the JSON summary).
- The generated rows are the rows that predicted generated tokens (the last prompt row and every
  generated row but the last; token p is predicted by row p - 1), as the JSON summary's
  `generated_rows_region_share`.
- gen_context / gen_generated: mean over generated rows of the mass on context keys (every region but
  `generated`) / on generated keys.
- lookback: Lookback Lens (Chuang et al. 2024) C / (C + N) with C, N the MEAN attention per context /
  generated key of a row, averaged over generated rows; a row that sees no generated key has N = 0
  (ratio 1); C + N = 0 gives 0.5.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from workbench.app.data.tensors import stat

from workbench.traces import metrics as definitions
from workbench.traces.tokens import REGIONS

GENERATED = REGIONS.index("generated")


@dataclass(frozen=True)
class Metric:
    """One layer x head metric, or a placeholder saying which command produces it."""

    name: str
    label: str
    description: str
    values: np.ndarray | None = None  # [layer, head]
    source: str = "statistics"
    hint: str | None = None  # shown instead of the heatmap when values is None
    zmin: float | None = None
    zmax: float | None = None
    colorscale: str = "Viridis"
    extra: dict = field(default_factory=dict)

    @property
    def available(self) -> bool:
        return self.values is not None


def predicting_rows(trace) -> np.ndarray:
    """Rows that predicted the generated tokens: position p is predicted by row p - 1."""
    return definitions.predicting_rows(trace).numpy()


def lookback_ratio(region_mass, region_count) -> np.ndarray:
    """Lookback ratio [head, row] from region_mass [head, row, region] and region_count [row, region]."""
    return definitions.lookback_ratio(region_mass, region_count).numpy()


def _np(tensor) -> np.ndarray:
    """float64 numpy copy (numpy, not torch, for these small reductions: torch's intra-op threads spin badly
    on a loaded machine, 100x slower than one thread for tensors this size)."""
    return tensor.numpy().astype(np.float64) if hasattr(tensor, "numpy") else np.asarray(tensor, dtype=np.float64)


def _layer_values(trace, stack: str, layer: int, rows: np.ndarray) -> dict[str, np.ndarray]:
    key_mass, key_count = stat(trace, stack, layer, "key_mass"), stat(trace, stack, layer, "key_count")
    region_mass, region_count = stat(trace, stack, layer, "region_mass"), stat(trace, stack, layer, "region_count")
    entropy = stat(trace, stack, layer, "entropy")
    if key_mass is None or region_mass is None or entropy is None or region_count is None:
        return {}
    key_mass, region_mass, entropy = _np(key_mass), _np(region_mass), _np(entropy)
    region_count = _np(region_count)
    n_heads = key_mass.shape[0]
    visible = region_count.sum(-1)  # [row]
    seen = visible > 0
    out = {"sink": definitions.alpha(key_mass, _np(key_count))[:, 0].numpy()}
    out["entropy"] = definitions.mean_over_rows(entropy, region_count).numpy() if seen.any() \
        else np.full(n_heads, np.nan)
    several = visible > 1
    out["entropy_norm"] = (definitions.normalised_entropy(entropy, region_count).numpy()[:, several].mean(-1)
                           if several.any() else np.full(n_heads, np.nan))
    shares = definitions.region_shares(region_mass, region_count).numpy()  # [head, region]
    for region in range(region_mass.shape[-1]):
        out[f"share:{REGIONS[region]}"] = shares[:, region]
    if stack == "text" and len(rows):
        on_rows = definitions.region_shares(region_mass, region_count, rows).numpy()  # [head, region]
        out["gen_generated"] = on_rows[:, GENERATED]
        out["gen_context"] = on_rows.sum(-1) - on_rows[:, GENERATED]
        out["lookback"] = definitions.mean_lookback_ratio(region_mass, region_count, rows).numpy()
    return out


_LABELS = {
    "sink": ("sink score (alpha of position 0, all rows)", ("Gu et al. 2025: mean attention position 0 receives from "
                                                            "every query row that sees it, prompt and generated (the "
                                                            "sinks analysis defaults to the prompt rows)"),
             0.0, 1.0, "Viridis"),
    "entropy": ("attention entropy (nats)", "mean over query rows of the row's attention entropy", 0.0, None,
                "Cividis"),
    "entropy_norm": ("normalised entropy", ("row entropy / log(visible keys), mean over rows: 0 = one key, "
                                            "1 = uniform"), 0.0, 1.0, "Cividis"),
    "gen_context": ("context share (generated rows)", ("attention on non-generated keys, mean over the rows "
                                                       "that predicted generated tokens"), 0.0, 1.0, "Blues"),
    "gen_generated": ("generated share (generated rows)", ("attention on generated keys, mean over the rows "
                                                           "that predicted generated tokens"), 0.0, 1.0, "Greens"),
    "lookback": ("lookback ratio (generated rows)", ("Lookback Lens C/(C+N) with per-key means, averaged "
                                                     "over the rows that predicted generated tokens"), 0.0, 1.0,
                 "RdBu"),
}


def statistics_metrics(trace, stack: str = "text") -> dict[str, Metric]:
    """All metrics the statistics of `stack` support, by name (see the module docstring)."""
    n_layers = trace.n_layers(stack)
    rows = predicting_rows(trace) if stack == "text" else np.zeros(0, dtype=np.int64)
    per_layer = [_layer_values(trace, stack, layer, rows) for layer in range(n_layers)]
    names = [name for name in per_layer[0]] if per_layer and per_layer[0] else []
    present = _present_regions(trace, stack)
    metrics: dict[str, Metric] = {}
    for name in names:
        if name.startswith("share:") and REGIONS.index(name[6:]) not in present:
            continue
        stacked = np.stack([np.asarray(values.get(name), dtype=np.float64) if name in values
                            else np.full(trace.n_heads(stack), np.nan) for values in per_layer])
        if name.startswith("share:"):
            region = name[6:]
            label = (f"{region} share", f"attention on {region} keys, mean over query rows", 0.0, 1.0, "Blues")
        else:
            label = _LABELS[name]
        metrics[name] = Metric(name, label[0], label[1], stacked, zmin=label[2], zmax=label[3], colorscale=label[4])
    return metrics


def _present_regions(trace, stack: str) -> set[int]:
    if stack != "text":
        return {REGIONS.index("special"), REGIONS.index("image")}
    return {REGIONS.index(token.region) for token in trace.tokens}


def token_lookback(trace) -> np.ndarray | None:
    """Lookback ratio per [layer, head, generated token] (row p - 1 for the token at p); None without generation."""
    rows = predicting_rows(trace)
    if not len(rows):
        return None
    layers = []
    for layer in range(trace.n_layers("text")):
        region_mass, region_count = stat(trace, "text", layer, "region_mass"), stat(trace, "text", layer, "region_count")
        if region_mass is None:
            return None
        layers.append(lookback_ratio(_np(region_mass)[:, rows], _np(region_count)[rows]))
    return np.stack(layers)


def token_region_shares(trace, position: int, stack: str = "text") -> np.ndarray:
    """[layer, head, region] attention of query row `position` on each region (from statistics)."""
    out = []
    for layer in range(trace.n_layers(stack)):
        region_mass = stat(trace, stack, layer, "region_mass")
        out.append(_np(region_mass[:, position]))
    return np.stack(out)


def token_entropy(trace, position: int, stack: str = "text") -> np.ndarray:
    """[layer, head] attention entropy of query row `position`."""
    return np.stack([_np(stat(trace, stack, layer, "entropy")[:, position]) for layer in range(trace.n_layers(stack))])


def key_alpha(trace, stack: str, layer: int) -> np.ndarray:
    """[head, key_pos] Gu et al. alpha of every key in one layer."""
    key_mass, key_count = stat(trace, stack, layer, "key_mass"), stat(trace, stack, layer, "key_count")
    return definitions.alpha(_np(key_mass), _np(key_count)).numpy()


def sink_keys(trace, stack: str, layer: int, head: int) -> list[int]:
    """Keys that are sinks of one head: alpha > SINK_EPSILON (Gu et al.)."""
    return definitions.sink_mask(key_alpha(trace, stack, layer)[head]).nonzero().flatten().tolist()
