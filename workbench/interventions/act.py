"""ACT attention calibration (Yu et al. 2024, "Unveiling and Harnessing Hidden Attention Sinks", GATECH-EIC/ACT):
in the selected heads, key columns other than position 0 whose Gu importance alpha_k exceeds the threshold are
scaled by beta; each row's freed mass goes to its other keys in proportion to their attention."""

from __future__ import annotations

from dataclasses import dataclass, fields

import torch

from workbench.errors import InputError
from workbench.interventions.eager import probabilities, replace_rows, visibility
from workbench.interventions.runtime import Runtime


@dataclass(frozen=True)
class ACT:
    """ACT attention calibration. layers/heads None = all; the released scripts calibrate from layer 2 on.

    rule "absolute": alpha_k > threshold (released code, 0.1); "relative": alpha_k > factor / n (paper).
    min_queries: keys seen by fewer query rows are never sinks (a late key's alpha is a handful of rows).
    """

    beta: float = 0.4
    threshold: float = 0.1
    rule: str = "absolute"
    factor: float = 5.0
    first_layer: int = 2
    layers: tuple[int, ...] | None = None
    heads: tuple[int, ...] | None = None
    min_queries: int = 16

    name = "act"

    def __post_init__(self):
        if not 0.0 <= self.beta <= 1.0:
            raise InputError(f"act: beta must lie in [0, 1], not {self.beta}")
        if self.rule not in ("absolute", "relative"):
            raise InputError(f"act: rule must be 'absolute' or 'relative', not {self.rule!r}")

    def wants(self, layer: int, n_heads: int) -> list[int]:
        if layer < self.first_layer or (self.layers is not None and layer not in self.layers):
            return []
        return [h for h in range(n_heads) if self.heads is None or h in self.heads]

    def start(self, layout, *, image_positions=()) -> _ACTRuntime:
        return _ACTRuntime(self, layout)

    def to_json(self) -> dict:
        return {"name": self.name, **{f.name: getattr(self, f.name) for f in fields(self)}}


def effective_min_queries(min_queries: int, n_keys: int) -> int:
    """The min_queries guard, relaxed on short inputs to a quarter of the sequence (at least 1)."""
    return max(1, min(min_queries, n_keys // 4))


class _ACTRuntime(Runtime):
    def __init__(self, spec: ACT, layout):
        super().__init__(layout)
        self.spec = spec
        self.sinks: dict[int, torch.Tensor] = {}  # layer -> [batch, head (selected), key_pos] bool

    def apply(self, module, *, query, key, value, attention_mask, scaling, causal, output):
        stack, layer = self.layout.locate(module)
        heads = self.spec.wants(layer, query.shape[1]) if stack == "text" else []
        if not heads:
            return output
        n_queries, n_keys = query.shape[2], key.shape[2]
        probs = probabilities(query, key, attention_mask, scaling=scaling, causal=causal, heads=heads)
        if n_queries == n_keys:  # a full forward: find this input's sinks
            visible = visibility(attention_mask, causal=causal, n_queries=n_queries, n_keys=n_keys).to(probs.device)
            count = visible.sum(-2)  # [batch, 1, key_pos]
            alpha = probs.sum(-2) / count.clamp_min(1)
            limit = self.spec.threshold if self.spec.rule == "absolute" else self.spec.factor / n_keys
            sinks = (alpha > limit) & (count >= effective_min_queries(self.spec.min_queries, n_keys))
            sinks[..., 0] = False
            self.sinks[layer] = sinks
        sinks = self.sinks.get(layer)
        if sinks is None or not bool(sinks.any()):
            return output
        columns = torch.zeros(*sinks.shape[:2], n_keys, dtype=torch.bool, device=probs.device)
        columns[..., : min(n_keys, sinks.shape[-1])] = sinks[..., :n_keys]
        columns = columns[:, :, None, :]  # [batch, head, 1, key_pos]
        sink_mass = (probs * columns).sum(-1, keepdim=True)
        rest = probs.masked_fill(columns, 0.0)
        rest_sum = rest.sum(-1, keepdim=True)
        rows = (sink_mass > 0) & (rest_sum > 0)
        freed = (1 - self.spec.beta) * sink_mass
        new = torch.where(columns, probs * self.spec.beta, probs + freed * rest / rest_sum.clamp_min(1e-30))
        new = torch.where(rows, new, probs)
        for index, head in enumerate(heads):
            changed = rows[:, index, :, 0]
            self._count(layer, head, int(changed.sum()), float((freed[:, index, :, 0] * changed).sum()))
        return replace_rows(output, heads, new, value, rows[..., 0])
