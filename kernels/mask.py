"""Which keys each query may see, described without building the [query_pos, key_pos] mask up front."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class MaskSpec:
    """Visibility of keys to queries.

    causal: key j is visible to query row i iff j <= i + query_offset.
    query_offset: absolute position of query row 0 (with a KV cache: n_keys - n_queries).
    sliding_window: if set, key j is also hidden when (i + query_offset) - j >= sliding_window.
    key_padding: [batch, key_pos] bool, True for real tokens (False keys are hidden from every query).
    dense: [batch, 1, query_pos, key_pos] bool, True = visible; when given it replaces all of the above
        (for arbitrary masks handed over by a model, e.g. LLaVA's or a prefix-LM's).
    """

    causal: bool = True
    query_offset: int = 0
    sliding_window: int | None = None
    key_padding: torch.Tensor | None = None
    dense: torch.Tensor | None = None

    def block(self, q_start: int, q_end: int, k_start: int, k_end: int, device=None) -> torch.Tensor:
        """Visibility of keys [k_start, k_end) to query rows [q_start, q_end): [batch|1, 1, q, k] bool."""
        if self.dense is not None:
            if self.dense.shape[1] != 1:
                raise ValueError("MaskSpec.dense must have a head axis of size 1 (one mask for all heads)")
            return self.dense[:, :, q_start:q_end, k_start:k_end].to(torch.bool)
        device = device if device is not None else (self.key_padding.device if self.key_padding is not None else None)
        query_abs = torch.arange(q_start, q_end, device=device)[:, None] + self.query_offset
        key_abs = torch.arange(k_start, k_end, device=device)[None, :]
        visible = torch.ones(q_end - q_start, k_end - k_start, dtype=torch.bool, device=device)
        if self.causal:
            visible &= key_abs <= query_abs
        if self.sliding_window is not None:
            visible &= (query_abs - key_abs) < self.sliding_window
        visible = visible[None, None]
        if self.key_padding is not None:
            visible = visible & self.key_padding[:, None, None, k_start:k_end].to(torch.bool)
        return visible
