"""Numerical health of a trace's statistics: non-finite values and the softmax normaliser Z far from 1.

The capture records its own verdict in the manifest (`checks`); `stored_health` recomputes it from the stored
statistics, so a bundle edited or damaged after capture (or written by another tool) is judged by its data,
not by its own claim. fp16 overflow and bad masks show up as inf/NaN or as rows whose weights do not sum to 1.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

Z_TOLERANCE = 1e-3  # max |Z - 1| of a healthy capture (fp32 statistics; exact SDPA gives ~1e-6)
CHECKED = ("key_mass", "region_mass", "entropy", "normaliser")


@dataclass(frozen=True)
class Health:
    non_finite: int = 0
    max_normaliser_error: float = 0.0
    flagged: list[str] = field(default_factory=list)  # "text layer 3", "vision layer 0"

    @property
    def healthy(self) -> bool:
        return self.non_finite == 0 and self.max_normaliser_error < Z_TOLERANCE

    def describe(self) -> str:
        where = f" in {', '.join(self.flagged[:6])}{' ...' if len(self.flagged) > 6 else ''}" if self.flagged else ""
        return (f"{self.non_finite} non-finite statistics and max |Z - 1| = {self.max_normaliser_error:.2g}{where}; "
                "these numbers are unreliable: trace again in float32 (--dtype float32) or check the attention mask")


def layer_problems(stats: dict[str, torch.Tensor]) -> tuple[int, float]:
    """(non-finite count, max |Z - 1| over query rows that see a key) of one layer's statistics."""
    non_finite = sum(int((~torch.isfinite(stats[name])).sum()) for name in CHECKED if name in stats)
    error = 0.0
    if "normaliser" in stats:
        z = stats["normaliser"].float()  # [head, query_pos]
        seen = stats["region_count"].sum(-1) > 0 if "region_count" in stats else torch.ones(z.shape[-1], dtype=bool)
        if seen.any():
            deviation = (z[:, seen] - 1).abs().max().item()
            error = float("inf") if math.isnan(deviation) else deviation  # NaN counts as infinitely wrong
    return non_finite, error


def stored_health(trace) -> Health:
    """Recompute the health checks from the statistics stored in `trace` (reads every layer's statistics)."""
    non_finite, worst, flagged = 0, 0.0, []
    for stack in trace.stacks:
        for layer in range(trace.n_layers(stack)):
            count, error = layer_problems(trace.layer(layer, stack))
            non_finite, worst = non_finite + count, max(worst, error)
            if count or error >= Z_TOLERANCE:
                flagged.append(f"{stack} layer {layer}")
    return Health(non_finite, worst, flagged)


def manifest_health(trace) -> Health:
    """The verdict the capture wrote into the manifest's checks."""
    checks = trace.checks
    try:
        return Health(int(checks.get("non_finite", 0)), float(checks.get("max_normaliser_error", 0.0)),
                      [str(x) for x in checks.get("flagged", [])] if isinstance(checks.get("flagged"), list) else [])
    except (TypeError, ValueError):
        return Health(0, float("inf"), ["manifest checks unreadable"])


def health(trace, *, recheck: bool = True) -> Health:
    """The worse of the manifest's verdict and (recheck=True) the one recomputed from the stored statistics."""
    claimed = manifest_health(trace)
    if claimed.healthy and "healthy" in trace.checks and not trace.checks["healthy"]:
        claimed = Health(claimed.non_finite, float("inf"), claimed.flagged or ["manifest flag"])
    if not recheck:
        return claimed
    found = stored_health(trace)
    return Health(max(claimed.non_finite, found.non_finite), max(claimed.max_normaliser_error,
                  found.max_normaliser_error), sorted(set(claimed.flagged) | set(found.flagged)))
