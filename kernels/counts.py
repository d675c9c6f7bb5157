"""Mask-only statistics (how many keys / queries are visible), shared by the bounded-memory implementations.

They depend on the mask alone, not on the scores, so they are computed once per call and without a
[query_pos, key_pos] tensor for structural masks (causal, sliding window, key padding): O(key_pos * region)
memory via prefix sums. A dense MaskSpec is already O(query_pos * key_pos); it is reduced in query blocks.
"""

from __future__ import annotations

import torch

from workbench.kernels.mask import MaskSpec


def visible_key_range(mask: MaskSpec, q_start: int, q_end: int, n_keys: int) -> tuple[int, int]:
    """Keys [lo, hi) that any of the query rows [q_start, q_end) may see under the structural mask.

    Ignores key padding and dense masks (both only hide keys inside the range).
    """
    if mask.dense is not None:
        return 0, n_keys
    lo, hi = 0, n_keys
    if mask.causal:
        hi = min(n_keys, q_end - 1 + mask.query_offset + 1)
    if mask.sliding_window is not None:
        lo = max(0, q_start + mask.query_offset - mask.sliding_window + 1)
    return lo, max(lo, hi)


def region_one_hot(
    key_regions: torch.Tensor, n_regions: int, device, extra_ones: bool = False
) -> torch.Tensor:
    """[key_pos, region (+1)] fp32 one-hot of the key regions; extra_ones appends an all-ones column."""
    regions = key_regions.to(device=device, dtype=torch.long)
    one_hot = torch.nn.functional.one_hot(regions, n_regions).float()
    if extra_ones:
        one_hot = torch.cat([one_hot, torch.ones_like(one_hot[:, :1])], dim=1)
    return one_hot


def visibility_counts(
    mask: MaskSpec,
    *,
    batch: int,
    n_queries: int,
    n_keys: int,
    key_regions: torch.Tensor,
    n_regions: int,
    device,
    block_q: int = 1024,
) -> tuple[torch.Tensor, torch.Tensor]:
    """key_count [batch, key_pos] (queries per key), region_count [batch, query_pos, region]; int64."""
    if mask.dense is not None:
        regions = key_regions.to(device=device, dtype=torch.long)
        one_hot = torch.nn.functional.one_hot(regions, n_regions)  # [key_pos, region] int64
        dense = mask.dense[:, 0].to(device=device, dtype=torch.bool).expand(batch, n_queries, n_keys)
        key_count = dense.sum(dim=1)
        region_count = torch.empty(batch, n_queries, n_regions, dtype=torch.long, device=device)
        one_hot_f = one_hot.double()  # exact integer counts far beyond fp32's 2**24
        for q0 in range(0, n_queries, block_q):
            region_count[:, q0 : q0 + block_q] = (dense[:, q0 : q0 + block_q].double() @ one_hot_f).long()
        return key_count, region_count

    rows = torch.arange(n_queries, device=device) + mask.query_offset
    hi = torch.clamp(rows + 1, 0, n_keys) if mask.causal else torch.full_like(rows, n_keys)
    lo = (
        torch.clamp(rows - mask.sliding_window + 1, 0, n_keys)
        if mask.sliding_window is not None
        else torch.zeros_like(rows)
    )
    weight = mask.key_padding.to(device=device, dtype=torch.long) if mask.key_padding is not None else None
    return interval_counts(lo[None], torch.maximum(hi, lo)[None], batch=batch, n_keys=n_keys,
                           key_regions=key_regions, n_regions=n_regions, device=device, key_weight=weight)


def interval_counts(
    start: torch.Tensor,
    end: torch.Tensor,
    *,
    batch: int,
    n_keys: int,
    key_regions: torch.Tensor,
    n_regions: int,
    device,
    key_weight: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """key_count [batch, key_pos] and region_count [batch, query_pos, region] (int64) when query row i sees the
    keys [start_i, end_i) (`MaskSpec.key_intervals`; start, end: [batch|1, query_pos], end >= start), less the
    keys whose key_weight [batch, key_pos] is 0. Prefix sums over the keys: no [query_pos, key_pos] tensor."""
    regions = key_regions.to(device=device, dtype=torch.long)
    one_hot = torch.nn.functional.one_hot(regions, n_regions)  # [key_pos, region] int64
    start, end = start.to(device), end.to(device)
    weight = key_weight if key_weight is not None else torch.ones(1, n_keys, dtype=torch.long, device=device)
    prefix = torch.zeros(weight.shape[0], n_keys + 1, n_regions, dtype=torch.long, device=device)
    prefix[:, 1:] = torch.cumsum(weight[:, :, None] * one_hot[None], dim=1)
    # rows of batch b read prefix b (or the shared prefix 0); each row's count is prefix[end] - prefix[start]
    rows_batch = max(start.shape[0], weight.shape[0])
    prefix = prefix.expand(rows_batch, -1, -1)
    start_x, end_x = start.expand(rows_batch, -1), end.expand(rows_batch, -1)

    def prefix_at(positions: torch.Tensor) -> torch.Tensor:
        return torch.gather(prefix, 1, positions[:, :, None].expand(-1, -1, n_regions))

    region_count = (prefix_at(end_x) - prefix_at(start_x)).expand(batch, -1, -1).contiguous()
    # Queries per key from a difference array over the row intervals [start_i, end_i), per batch row.
    delta = torch.zeros(start.shape[0], n_keys + 1, dtype=torch.long, device=device)
    delta.scatter_add_(1, start, torch.ones_like(start))
    delta.scatter_add_(1, end, -torch.ones_like(end))
    rows_per_key = torch.cumsum(delta, dim=1)[:, :n_keys]
    key_count = (weight * rows_per_key).expand(batch, n_keys).contiguous()
    return key_count, region_count
