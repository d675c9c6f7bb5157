"""Block-wise exact statistics in plain torch (implementation "torch", the CPU default).

Two passes as in FlashAttention's backward (docs/kernels.md, 'Statistics without the map'): the row log-sum-exp lse_i (from the
forward when given, else computed here), then the scores are recomputed block by block and the exact
p_ij = exp(s_ij - lse_i) is reduced in fp32 into column sums, region masses, Z and the entropy
H_i = -sum_j p_ij (s_ij - lse_i). Blocks no query row can see (causal, sliding window) are skipped.

Memory bound (beyond the inputs): a working set of about 3 * batch * head * block_q * block_k fp32
values (scores, probabilities, mask block), plus the outputs O(batch * head * (query_pos * (region + 2) +
key_pos)) and O(key_pos * region) for the counts; fp32 copies of query / key only when they are not fp32
already; without a given lse, one SDPA output [batch, head, query_pos, d_head] for plain causal masks.
Maps (if requested) and top-k add their own output size. GQA: queries are grouped by kv head
([batch, kv_head, group * block_q, d_head]), so keys are never expanded to all heads.
"""

from __future__ import annotations

import bisect
from typing import Sequence

import torch

from workbench.kernels.counts import region_one_hot, visibility_counts, visible_key_range
from workbench.kernels.result import AttentionStatistics
from workbench.kernels.mask import MaskSpec

DEFAULT_BLOCK_K = 256
# log(smallest normal fp32) ~ -87.34. torch's CPU exp takes a slow path (~20-300x per element) for inputs
# whose result is subnormal or zero, -inf included. So log p is clamped at LOG_P_FLOOR before exp and the
# clamped entries are flushed to exactly 0 after it: each such p changes by < 1.7e-38.
LOG_P_FLOOR = -87.0
P_FLUSH = 1.7e-38  # just above exp(LOG_P_FLOOR) = 1.646e-38 in fp32


def default_block_size() -> tuple[int, int]:
    """(block_q, block_k): small blocks stay in cache; more threads need taller blocks to share the work.

    Measured on 2 cores for a SmolLM2 layer (H=9, Hkv=3, d=64): (64, 256) on 1 thread, (128, 256) on 2.
    """
    return min(512, 64 * max(1, torch.get_num_threads())), DEFAULT_BLOCK_K


MAX_RUNS_PER_BLOCK = 4  # above this many region runs in a key block, reduce with a one-hot matmul instead


def region_runs(key_regions: torch.Tensor) -> list[tuple[int, int, int]]:
    """Maximal runs (start, end, region) of equal consecutive region ids; regions are usually a few runs."""
    regions = key_regions.detach().to("cpu", torch.long)
    if regions.numel() == 0:
        return []
    starts = [0] + (torch.nonzero(regions[1:] != regions[:-1]).flatten() + 1).tolist()
    ends = starts[1:] + [regions.numel()]
    values = regions[starts].tolist()
    return list(zip(starts, ends, values, strict=True))


def _runs_in(runs: list[tuple[int, int, int]], run_starts: list[int], k0: int, k1: int):
    """The runs clipped to [k0, k1), relative to k0, or None when there are more than MAX_RUNS_PER_BLOCK."""
    first = bisect.bisect_right(run_starts, k0) - 1
    out = []
    for start, end, region in runs[first:]:
        if start >= k1:
            break
        out.append((max(start, k0) - k0, min(end, k1) - k0, region))
        if len(out) > MAX_RUNS_PER_BLOCK:
            return None
    return out


def _padding_prefix(mask: MaskSpec) -> list[int] | None:
    """Prefix counts of keys that padding hides in any batch row (None without padding)."""
    if mask.key_padding is None:
        return None
    hidden = (~mask.key_padding.to(torch.bool)).any(dim=0).long().cpu()
    return [0] + torch.cumsum(hidden, 0).tolist()


def _block_is_full(
    mask: MaskSpec, q0: int, q1: int, k0: int, k1: int, padding_prefix: list[int] | None
) -> bool:
    """True when every (query, key) pair of the block is visible, so no mask needs applying."""
    if mask.dense is not None:
        return False
    if padding_prefix is not None and padding_prefix[k1] != padding_prefix[k0]:
        return False
    if mask.causal and k1 - 1 > q0 + mask.query_offset:
        return False
    if mask.sliding_window is not None and (q1 - 1 + mask.query_offset) - k0 >= mask.sliding_window:
        return False
    return True


def _key_blocks(mask: MaskSpec, q0: int, q1: int, n_keys: int, block_k: int, min_keys: int):
    """Key blocks [k0, k1) to visit for query rows [q0, q1); at least min_keys keys (for top-k)."""
    lo, hi = visible_key_range(mask, q0, q1, n_keys)
    if hi - lo < min_keys:
        hi = min(n_keys, lo + min_keys)
        lo = max(0, hi - min_keys)
    for k0 in range(lo, hi, block_k):
        yield k0, min(hi, k0 + block_k)


def _scores(
    query_block: torch.Tensor, key32: torch.Tensor, k0: int, k1: int, softcap: float | None
) -> torch.Tensor:
    """[batch, kv_head, group * bq, bk] scores of pre-scaled queries against keys [k0, k1)."""
    scores = torch.matmul(query_block, key32[:, :, k0:k1].transpose(-1, -2))
    if softcap is not None:
        scores.div_(softcap).tanh_().mul_(softcap)
    return scores


def _grouped_queries(query: torch.Tensor, q0: int, q1: int, n_kv_heads: int, scaling: float) -> torch.Tensor:
    """Rows [q0, q1) as [batch, kv_head, group * (q1 - q0), d_head] fp32, already multiplied by scaling."""
    batch, n_heads, _, d_head = query.shape
    block = query[:, :, q0:q1].reshape(batch, n_kv_heads, (n_heads // n_kv_heads) * (q1 - q0), d_head)
    return torch.mul(block.float(), scaling)


def _visibility(mask: MaskSpec, q0: int, q1: int, k0: int, k1: int, device) -> torch.Tensor:
    """[batch|1, 1, 1, bq, bk] bool, broadcastable over [batch, kv_head, group, bq, bk]."""
    return mask.block(q0, q1, k0, k1, device=device)[:, :, None]


def log_normaliser_blockwise(
    query: torch.Tensor,
    key: torch.Tensor,
    *,
    scaling: float,
    mask: MaskSpec,
    softcap: float | None = None,
    block_size: tuple[int, int] | None = None,
) -> torch.Tensor:
    """Row log-sum-exp [batch, head, query_pos] fp32 by an online (running max) pass; 0 where no key is seen."""
    batch, n_heads, n_queries, _ = query.shape
    n_kv_heads, n_keys = key.shape[1], key.shape[2]
    group = n_heads // n_kv_heads
    block_q, block_k = block_size or default_block_size()
    key32 = key.float()
    padding_prefix = _padding_prefix(mask)
    out = torch.zeros(batch, n_heads, n_queries, dtype=torch.float32, device=query.device)
    for q0 in range(0, n_queries, block_q):
        q1 = min(n_queries, q0 + block_q)
        qb = _grouped_queries(query, q0, q1, n_kv_heads, scaling)
        running_max = torch.full((batch, n_kv_heads, group, q1 - q0), float("-inf"), device=query.device)
        running_sum = torch.zeros_like(running_max)
        for k0, k1 in _key_blocks(mask, q0, q1, n_keys, block_k, 0):
            scores = _scores(qb, key32, k0, k1, softcap).view(batch, n_kv_heads, group, q1 - q0, k1 - k0)
            if not _block_is_full(mask, q0, q1, k0, k1, padding_prefix):
                scores = scores.masked_fill(~_visibility(mask, q0, q1, k0, k1, query.device), float("-inf"))
            new_max = torch.maximum(running_max, scores.amax(dim=-1))
            safe_max = torch.where(torch.isfinite(new_max), new_max, torch.zeros_like(new_max))
            running_sum = running_sum * torch.exp(running_max - safe_max) + torch.exp(
                scores - safe_max[..., None]
            ).sum(-1)
            running_max = new_max
        lse = torch.where(
            running_sum > 0, running_max + torch.log(running_sum), torch.zeros_like(running_sum)
        )
        out[:, :, q0:q1] = lse.reshape(batch, n_heads, q1 - q0)
    return out


def log_normaliser_sdpa(
    query: torch.Tensor, key: torch.Tensor, *, scaling: float, mask: MaskSpec
) -> torch.Tensor | None:
    """Row log-sum-exp from the fused CPU SDPA kernel where the mask needs no dense tensor, else None.

    Handles no mask and plain causal with query_offset 0 over a square map (top-left aligned is_causal).
    """
    if (
        query.device.type != "cpu"
        or mask.dense is not None
        or mask.key_padding is not None
        or mask.sliding_window is not None
    ):
        return None
    n_queries, n_keys = query.shape[2], key.shape[2]
    if mask.causal and not (mask.query_offset == 0 and n_queries == n_keys):
        return None
    q32, k32 = query.float(), key.float()
    _, lse = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(
        q32,
        k32,
        k32,
        0.0,
        bool(mask.causal),
        scale=scaling,
    )
    return lse


def blockwise_attention_statistics(
    query: torch.Tensor,
    key: torch.Tensor,
    *,
    scaling: float,
    mask: MaskSpec,
    key_regions: torch.Tensor,
    n_regions: int,
    top_k: int = 0,
    map_heads: Sequence[int] | None = None,
    log_normaliser: torch.Tensor | None = None,
    softcap: float | None = None,
    block_size: tuple[int, int] | None = None,
) -> AttentionStatistics:
    batch, n_heads, n_queries, _ = query.shape
    n_kv_heads, n_keys = key.shape[1], key.shape[2]
    group = n_heads // n_kv_heads
    block_q, block_k = block_size or default_block_size()
    device = query.device
    if log_normaliser is None and softcap is None:
        log_normaliser = log_normaliser_sdpa(query, key, scaling=scaling, mask=mask)
    if log_normaliser is None:
        log_normaliser = log_normaliser_blockwise(
            query,
            key,
            scaling=scaling,
            mask=mask,
            softcap=softcap,
            block_size=(block_q, block_k),
        )
    lse = log_normaliser.float()
    lse = torch.where(torch.isfinite(lse), lse, torch.zeros_like(lse))  # rows that see nothing: p = 0 anyway

    key32 = key.float()
    padding_prefix = _padding_prefix(mask)
    one_hot = region_one_hot(key_regions, n_regions, device)
    runs = region_runs(key_regions)
    run_starts = [start for start, _, _ in runs]
    key_mass = torch.zeros(batch, n_kv_heads, group, n_keys, dtype=torch.float32, device=device)
    region_mass = torch.zeros(batch, n_heads, n_queries, n_regions, dtype=torch.float32, device=device)
    entropy = torch.zeros(batch, n_heads, n_queries, dtype=torch.float32, device=device)
    k_top = min(top_k, n_keys)
    top_index = (
        torch.zeros(batch, n_heads, n_queries, k_top, dtype=torch.long, device=device) if k_top else None
    )
    top_weight = (
        torch.zeros(batch, n_heads, n_queries, k_top, dtype=torch.float32, device=device) if k_top else None
    )
    heads = list(map_heads) if map_heads else []
    maps = (
        torch.zeros(batch, len(heads), n_queries, n_keys, dtype=torch.float32, device=device)
        if heads
        else None
    )

    for q0 in range(0, n_queries, block_q):
        q1 = min(n_queries, q0 + block_q)
        bq = q1 - q0
        qb = _grouped_queries(query, q0, q1, n_kv_heads, scaling)
        lse_b = lse[:, :, q0:q1].reshape(batch, n_kv_heads, group * bq, 1)
        rows_mass = torch.zeros(batch, n_kv_heads, group * bq, n_regions, device=device)
        rows_plogp = torch.zeros(batch, n_kv_heads, group * bq, device=device)
        run_w = run_i = None
        for k0, k1 in _key_blocks(mask, q0, q1, n_keys, block_k, k_top):
            bk = k1 - k0
            log_p = _scores(qb, key32, k0, k1, softcap).sub_(lse_b).clamp_min_(LOG_P_FLOOR)
            p = torch.nn.functional.threshold_(torch.exp(log_p), P_FLUSH, 0.0)
            p5 = p.view(batch, n_kv_heads, group, bq, bk)
            if not _block_is_full(mask, q0, q1, k0, k1, padding_prefix):
                p5.masked_fill_(~_visibility(mask, q0, q1, k0, k1, device), 0.0)
            block_runs = _runs_in(runs, run_starts, k0, k1)
            if block_runs is None:
                rows_mass += p @ one_hot[k0:k1]
            else:  # a few contiguous runs: plain row sums, cheaper than a thin matmul
                for a, b, region in block_runs:
                    rows_mass[..., region] += p[..., a:b].sum(dim=-1)
            key_mass[..., k0:k1] += p5.sum(dim=3)
            p4 = p5.view(batch, n_heads, bq, bk)
            if k_top:
                w, i = p4.topk(min(k_top, bk), dim=-1)
                i += k0
                if run_w is not None:
                    w, i = torch.cat([run_w, w], dim=-1), torch.cat([run_i, i], dim=-1)
                    w, pick = w.topk(min(k_top, w.shape[-1]), dim=-1)
                    i = i.gather(-1, pick)
                run_w, run_i = w, i
            if maps is not None:
                maps[:, :, q0:q1, k0:k1] = p4[:, heads]
            rows_plogp += log_p.mul_(p).sum(dim=-1)  # last use of p: log_p becomes p log p in place
        region_mass[:, :, q0:q1] = rows_mass.view(batch, n_heads, bq, n_regions)
        entropy[:, :, q0:q1] = -rows_plogp.view(batch, n_heads, bq)
        if k_top and run_w is not None:
            top_weight[:, :, q0:q1], top_index[:, :, q0:q1] = run_w, run_i

    key_count, region_count = visibility_counts(
        mask,
        batch=batch,
        n_queries=n_queries,
        n_keys=n_keys,
        key_regions=key_regions,
        n_regions=n_regions,
        device=device,
    )
    return AttentionStatistics(
        key_mass=key_mass.view(batch, n_heads, n_keys),
        key_count=key_count,
        region_mass=region_mass,
        region_count=region_count,
        entropy=entropy,
        normaliser=region_mass.sum(dim=-1),  # regions partition the keys
        top_index=top_index,
        top_weight=top_weight,
        maps=maps,
    )
