"""Fused Triton implementation ("triton"): a row kernel and a column kernel, deterministic (no atomics).

Row kernel, per (query block, batch * head): the row log-sum-exp when the forward did not supply it
(online max), then exact p_ij = exp(s_ij - lse_i) block by block into region masses (a one-hot dot), Z,
sum p log p (entropy), an optional top-k list (packed (weight, key) int64 bitonic top-k merged per key
block, top_k <= MAX_TOP_K) and optional maps of chosen heads. Column kernel, per (key block, batch * head):
sum over queries of p_ij with the lse of the row kernel. Both skip blocks the structural mask hides.
Memory beyond inputs and outputs: the lse [batch, head, query_pos] and mask-only counts; nothing O(n^2).

fp32 inputs use IEEE fp32 dots (TF32 would cost ~1e-3 relative error); bf16 / fp16 inputs use native
dots with fp32 accumulation (products are exact in fp32). Runs on CUDA tensors, or on CPU tensors when
TRITON_INTERPRET=1 was set before triton was first imported (tests and CI; slow, small shapes only).
Triton is imported lazily, on the first call.
"""

from __future__ import annotations

import os
from typing import Sequence

import torch

from workbench.kernels.counts import visibility_counts
from workbench.kernels.result import AttentionStatistics
from workbench.kernels.mask import MaskSpec

MAX_TOP_K = 64  # larger top_k: use implementation="torch" ("auto" does)
DEFAULT_BLOCK = (64, 64)
INTERPRET_BLOCK = (16, 16)  # tl.dot needs every dimension >= 16


def _next_pow2(x: int, floor: int = 16) -> int:
    return max(floor, 1 << max(0, (x - 1).bit_length()))


def _interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def triton_attention_statistics(
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
    if not query.is_cuda and not _interpreting():
        raise ValueError(
            "implementation='triton' needs CUDA tensors (or TRITON_INTERPRET=1 for CPU tests); use 'torch'"
        )
    if top_k > MAX_TOP_K:
        raise ValueError(f"implementation='triton' supports top_k <= {MAX_TOP_K}; got {top_k}: use 'torch'")
    from workbench.kernels import triton_kernels as kernels

    batch, n_heads, n_queries, d_head = query.shape
    n_kv_heads, n_keys = key.shape[1], key.shape[2]
    device = query.device
    block_q, block_k = block_size or (INTERPRET_BLOCK if _interpreting() else DEFAULT_BLOCK)
    k_top = min(top_k, n_keys)
    topk_pad = _next_pow2(k_top, 1) if k_top else 0
    block_k_row = max(block_k, topk_pad)
    query = query if query.stride(-1) == 1 else query.contiguous()
    key = key if key.stride(-1) == 1 else key.contiguous()
    if key.dtype != query.dtype:
        key = key.to(query.dtype)
    if _interpreting() and query.dtype != torch.float32:
        # The interpreter computes on numpy arrays, which have no bf16; fp32 gives the same exact products.
        query, key = query.float(), key.float()
    precision = "ieee" if query.dtype == torch.float32 else "tf32"  # only fp32 dots use the precision mode

    if log_normaliser is not None:
        lse = log_normaliser.to(device=device, dtype=torch.float32)
        lse = torch.where(torch.isfinite(lse), lse, torch.zeros_like(lse)).contiguous()
    else:
        lse = torch.empty(batch, n_heads, n_queries, dtype=torch.float32, device=device)
    regions = key_regions.to(device=device, dtype=torch.int32).contiguous()
    if mask.dense is not None:
        dense = mask.dense[:, 0].to(device=device, dtype=torch.uint8).contiguous()
        dense_strides = (0 if dense.shape[0] == 1 else dense.stride(0), dense.stride(1))
    else:
        dense, dense_strides = regions, (0, 0)  # placeholder pointer, never read
    if mask.key_padding is not None:
        pad = mask.key_padding.to(device=device, dtype=torch.uint8).contiguous()
        pad_stride = pad.stride(0)
    else:
        pad, pad_stride = regions, 0

    entropy = torch.empty(batch, n_heads, n_queries, dtype=torch.float32, device=device)
    region_mass = torch.empty(batch, n_heads, n_queries, n_regions, dtype=torch.float32, device=device)
    key_mass = torch.empty(batch, n_heads, n_keys, dtype=torch.float32, device=device)
    top_weight = (
        torch.empty(batch, n_heads, n_queries, k_top, dtype=torch.float32, device=device) if k_top else None
    )
    top_index = (
        torch.empty(batch, n_heads, n_queries, k_top, dtype=torch.int64, device=device) if k_top else None
    )
    heads = list(map_heads) if map_heads else []
    maps = (
        torch.zeros(batch, len(heads), n_queries, n_keys, dtype=torch.float32, device=device)
        if heads
        else None
    )
    map_slot = torch.full((n_heads,), -1, dtype=torch.int32)
    for slot, h in enumerate(heads):
        map_slot[h] = slot
    map_slot = map_slot.to(device)

    flags = dict(
        CAUSAL=bool(mask.causal),
        HAS_WINDOW=mask.sliding_window is not None,
        HAS_PADDING=mask.key_padding is not None,
        HAS_DENSE=mask.dense is not None,
        HAS_SOFTCAP=softcap is not None,
        PRECISION=precision,
    )
    common = (
        query.stride(0),
        query.stride(1),
        query.stride(2),
        key.stride(0),
        key.stride(1),
        key.stride(2),
        pad_stride,
        dense_strides[0],
        dense_strides[1],
    )
    scalars = dict(
        n_heads=n_heads,
        n_queries=n_queries,
        n_keys=n_keys,
        d_head=d_head,
        group=n_heads // n_kv_heads,
        scaling=float(scaling),
        softcap=float(softcap or 1.0),
        query_offset=int(mask.query_offset),
        window=int(mask.sliding_window or 1),
    )
    d_pad = _next_pow2(d_head)
    map_arg = maps if maps is not None else entropy
    map_strides = (maps.stride(0), maps.stride(1), maps.stride(2)) if maps is not None else (0, 0, 0)
    grid = (-(-n_queries // block_q), batch * n_heads)
    kernels.row_kernel[grid](
        query,
        key,
        lse,
        regions,
        pad,
        dense,
        entropy,
        region_mass,
        top_weight if k_top else entropy,
        top_index if k_top else entropy,
        map_arg,
        map_slot,
        *common,
        *map_strides,
        n_regions=n_regions,
        top_k=k_top,
        **scalars,
        BLOCK_Q=block_q,
        BLOCK_K=block_k_row,
        D_PAD=d_pad,
        R_PAD=_next_pow2(n_regions),
        TOPK_PAD=topk_pad,
        HAS_LSE=log_normaliser is not None,
        HAS_MAPS=maps is not None,
        **flags,
    )
    grid = (-(-n_keys // block_k), batch * n_heads)
    kernels.column_kernel[grid](
        query,
        key,
        lse,
        pad,
        dense,
        key_mass,
        *common,
        **scalars,
        BLOCK_Q=block_q,
        BLOCK_K=block_k,
        D_PAD=d_pad,
        **flags,
    )
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
        key_mass=key_mass,
        key_count=key_count,
        region_mass=region_mass,
        region_count=region_count,
        entropy=entropy,
        normaliser=region_mass.sum(dim=-1),
        top_index=top_index,
        top_weight=top_weight,
        maps=maps,
    )
