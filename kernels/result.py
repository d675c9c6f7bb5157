"""The result type every implementation returns, and the GQA head expansion they share.

Its own module so that the implementations import it without importing the dispatcher (`api`), which
imports them: no import cycle.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class AttentionStatistics:
    """Per-head attention statistics of one attention call (all fp32 except counts, int64).

    key_mass:     [batch, head, key_pos]            sum over queries of A[i, j] (column sums)
    key_count:    [batch, key_pos]                  number of queries that see key j
    region_mass:  [batch, head, query_pos, region]  sum over keys of region r of A[i, j]
    region_count: [batch, query_pos, region]        number of keys of region r visible to query i
    entropy:      [batch, head, query_pos]          -sum_j A[i, j] log A[i, j] (nats)
    normaliser:   [batch, head, query_pos]          sum_j A[i, j]; 1 for any query that sees a key
    top_index / top_weight: [batch, head, query_pos, k] the k most attended keys, or None
    maps:         [batch, len(map_heads), query_pos, key_pos] the full maps of the chosen heads, or None
    """

    key_mass: torch.Tensor
    key_count: torch.Tensor
    region_mass: torch.Tensor
    region_count: torch.Tensor
    entropy: torch.Tensor
    normaliser: torch.Tensor
    top_index: torch.Tensor | None = None
    top_weight: torch.Tensor | None = None
    maps: torch.Tensor | None = None


def expand_kv_heads(key: torch.Tensor, n_heads: int) -> torch.Tensor:
    """[batch, kv_head, key_pos, d_head] -> [batch, head, key_pos, d_head] (GQA: consecutive query heads share a kv head)."""
    n_kv_heads = key.shape[1]
    if n_heads % n_kv_heads:
        raise ValueError(f"{n_heads} query heads cannot share {n_kv_heads} key/value heads")
    return key.repeat_interleave(n_heads // n_kv_heads, dim=1)
