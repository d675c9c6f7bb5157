"""Numerical health of a trace's statistics: non-finite values, the softmax normaliser Z far from 1, and rows
that were never recorded.

The capture records its own verdict in the manifest (`checks`); `stored_health` recomputes it from the stored
statistics, so a bundle edited or damaged after capture (or written by another tool) is judged by its data,
not by its own claim. fp16 overflow and bad masks show up as inf/NaN or as rows whose weights do not sum to 1.

Every query row of a stored layer must be recorded: a trace holds one input, so every row sees at least one key
(itself, under any causal, sliding-window or full mask). A row with no visible key in region_count, or with
Z = 0, is a row the capture missed (a call that was never recorded, a mask that hid everything): it is counted
in `unrecorded_rows` and makes the trace UNHEALTHY, and Z must be 1 within Z_TOLERANCE on every row.
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
    model_dtype: str | None = None  # the dtype the model ran in, when known (the advice depends on it)
    unrecorded_rows: int = 0  # (layer, query row) pairs with no visible key or Z = 0, over all stacks

    @property
    def healthy(self) -> bool:
        return self.non_finite == 0 and self.unrecorded_rows == 0 and self.max_normaliser_error < Z_TOLERANCE

    def describe(self) -> str:
        where = f" in {', '.join(self.flagged[:6])}{' ...' if len(self.flagged) > 6 else ''}" if self.flagged else ""
        missing = f", {self.unrecorded_rows} query rows never recorded (Z = 0)" if self.unrecorded_rows else ""
        found = (f"{self.non_finite} non-finite statistics and max |Z - 1| = {self.max_normaliser_error:.2g}"
                 f"{missing}{where}")
        if self.model_dtype in (None, "float32", "float64"):  # float32 already (or unknown): precision is not it
            return (f"{found}; these numbers are unreliable: check the attention mask (a query row with every key "
                    "masked) and the model's weights for inf or NaN" +
                    ("" if self.model_dtype else ", or trace again in float32 (--dtype float32)"))
        return (f"{found}; these numbers are unreliable: the model ran in {self.model_dtype}, so trace again in "
                "float32 (--dtype float32), or check the attention mask")


def layer_checks(stats: dict[str, torch.Tensor]) -> tuple[int, float, int]:
    """(non-finite count, max |Z - 1| over every query row, unrecorded rows) of one layer's statistics, in one
    pass over them: an unrecorded row has no visible key in region_count, or Z = 0 in every head (and counts as
    |Z - 1| = 1)."""
    checked = [stats[name] for name in CHECKED if name in stats]
    non_finite = 0
    # A finite total proves every value finite (one read, one sync); otherwise count them (an overflowing sum of
    # finite values ends here too and counts 0).
    if checked and not math.isfinite(torch.stack([t.sum(dtype=torch.float64) for t in checked]).sum().item()):
        non_finite = sum(int((~torch.isfinite(t)).sum()) for t in checked)
    error = 0.0
    normaliser = stats.get("normaliser")
    n = normaliser.shape[-1] if normaliser is not None else stats["region_count"].shape[0]
    missing = torch.zeros(n, dtype=torch.bool)
    if normaliser is not None and normaliser.numel():
        normaliser = normaliser.float()
        extremes = torch.stack(torch.aminmax(normaliser))  # |Z - 1| is largest at one (fp32 z - 1 is monotone)
        deviation = (extremes - 1).abs().max().item()
        error = float("inf") if math.isnan(deviation) else deviation  # NaN counts as infinitely wrong
        if not extremes[0].item() > 0:  # a row of zeros is possible only then (NaN: check too)
            missing |= (normaliser == 0).all(0)  # [query_pos]
    if "region_count" in stats:
        missing |= stats["region_count"].sum(-1) == 0  # [query_pos]
    return non_finite, error, int(missing.sum())


# Up to this many values (16 MiB of fp32) a stack's layers are checked together (`clean_layers`): a short trace's
# layer costs ~20 tensor ops one by one, dispatch rather than arithmetic; a long one is read once either way.
STACKED_CHECK_VALUES = 1 << 22


def clean_layers(layers: list[dict[str, torch.Tensor]]) -> float | None:
    """max |Z - 1| over several layers' statistics (what `layer_checks` takes, of equal shapes) when every one of
    them passes every check (no non-finite value, no unrecorded row, |Z - 1| < Z_TOLERANCE), found with one set of
    tensor ops over them stacked; None when any may fail, or the layers differ in shape or are too large to stack:
    then `layer_checks` each one, to count and place what failed."""
    names = [name for name in (*CHECKED, "region_count") if name in layers[0]]
    if "normaliser" not in names or "region_count" not in names or not layers[0]["normaliser"].numel():
        return None
    if any(name not in layer or layer[name].shape != layers[0][name].shape for layer in layers for name in names):
        return None
    if sum(layer[name].numel() for layer in layers for name in names) > STACKED_CHECK_VALUES:
        return None
    stacked = {name: torch.stack([layer[name] for layer in layers]) for name in names}
    if not math.isfinite(torch.stack([stacked[name].sum(dtype=torch.float64) for name in names
                                      if name in CHECKED]).sum().item()):
        return None
    extremes = torch.stack(torch.aminmax(stacked["normaliser"].float()))
    if not extremes[0].item() > 0 or bool((stacked["region_count"].sum(-1) == 0).any()):
        return None  # a row with Z = 0 or no visible key may be unrecorded
    error = (extremes - 1).abs().max().item()
    return error if error < Z_TOLERANCE else None


def stored_health(trace) -> Health:
    """Recompute the health checks from the statistics stored in `trace` (reads every layer's statistics)."""
    non_finite, worst, missing, flagged = 0, 0.0, 0, []
    for stack in trace.stacks:
        for layer in range(trace.n_layers(stack)):
            stats = trace.layer(layer, stack)
            count, error, rows = layer_checks(stats)
            non_finite, worst, missing = non_finite + count, max(worst, error), missing + rows
            if count or rows or error >= Z_TOLERANCE:
                flagged.append(f"{stack} layer {layer}")
    return Health(non_finite, worst, flagged, unrecorded_rows=missing)


def manifest_health(trace) -> Health:
    """The verdict the capture wrote into the manifest's checks."""
    checks = trace.checks
    try:
        return Health(int(checks.get("non_finite", 0)), float(checks.get("max_normaliser_error", 0.0)),
                      [str(x) for x in checks.get("flagged", [])] if isinstance(checks.get("flagged"), list) else [],
                      unrecorded_rows=int(checks.get("unrecorded_rows", 0)))
    except (TypeError, ValueError):
        return Health(0, float("inf"), ["manifest checks unreadable"])


def health(trace, *, recheck: bool = True) -> Health:
    """The worse of the manifest's verdict and (recheck=True) the one recomputed from the stored statistics."""
    claimed = manifest_health(trace)
    dtype = trace.model.get("dtype") if isinstance(trace.model, dict) else None
    dtype = dtype if isinstance(dtype, str) and len(dtype) < 20 else None
    if claimed.healthy and "healthy" in trace.checks and not trace.checks["healthy"]:
        claimed = Health(claimed.non_finite, float("inf"), claimed.flagged or ["manifest flag"])
    if not recheck:
        return Health(claimed.non_finite, claimed.max_normaliser_error, claimed.flagged, dtype,
                      claimed.unrecorded_rows)
    found = stored_health(trace)
    return Health(max(claimed.non_finite, found.non_finite), max(claimed.max_normaliser_error,
                  found.max_normaliser_error), sorted(set(claimed.flagged) | set(found.flagged)), dtype,
                  max(claimed.unrecorded_rows, found.unrecorded_rows))
