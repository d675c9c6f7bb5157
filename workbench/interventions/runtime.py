"""What every intervention runtime shares: the per-input object the attention implementation calls, its report of
what moved, and `intervening`, which routes a model's attention through it."""

from __future__ import annotations

def intervening(model, runtime):
    """Route `model`'s attention through the workbench implementation and apply `runtime` (None: no-op)."""
    from workbench.capture.attention import editing

    return editing(model, runtime)


class Runtime:
    """What the attention implementation calls while an intervention is active, for one input."""

    def __init__(self, layout):
        self.layout = layout
        self.moved: dict[tuple[int, int], list[float]] = {}  # (layer, head) -> [rows changed, mass moved]

    def install(self, model) -> list:
        return []

    def apply(self, module, *, query, key, value, attention_mask, scaling, causal, output):
        raise NotImplementedError

    def _count(self, layer: int, head: int, rows: int, mass: float) -> None:
        entry = self.moved.setdefault((layer, head), [0, 0.0])
        entry[0] += rows
        entry[1] += mass

    def report(self) -> dict:
        """Per (layer, head) touched: query rows changed and attention mass moved, summed over forwards."""
        heads = [{"layer": layer, "head": head, "rows": int(rows), "mass_moved": round(mass, 6)}
                 for (layer, head), (rows, mass) in sorted(self.moved.items()) if rows]
        return {"heads": heads, "rows_changed": sum(h["rows"] for h in heads),
                "mass_moved": round(sum(h["mass_moved"] for h in heads), 6)}
