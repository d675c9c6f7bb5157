"""Triton kernels behind `triton_stats` (imported lazily: importing this module imports triton).

Row kernel: one program per (query block, batch * head); pass 1 (optional) the online log-sum-exp, pass 2
region masses, Z, sum p log p, top-k and maps. Column kernel: one program per (key block, batch * head),
sums p over the queries. Each output element is written by exactly one program: no atomics, deterministic.
Set TRITON_INTERPRET=1 before this module is first imported to run on CPU tensors (tests, CI).
"""

from __future__ import annotations

import triton
import triton.language as tl


@triton.jit
def _tanh(x):
    # tanh from exp (works in the interpreter); a Taylor series near 0 avoids cancellation in 1 - 2/(e+1).
    x2 = x * x
    series = x * (1.0 + x2 * (-1.0 / 3.0 + x2 * (2.0 / 15.0 + x2 * (-17.0 / 315.0 + x2 * (62.0 / 2835.0)))))
    e = tl.exp(-2.0 * tl.abs(x))
    big = (1.0 - e) / (1.0 + e)
    big = tl.where(x < 0, -big, big)
    return tl.where(tl.abs(x) < 0.125, series, big)


@triton.jit
def _scores(q, k_ptrs, k_mask, scaling, softcap, HAS_SOFTCAP: tl.constexpr, PRECISION: tl.constexpr):
    """[BLOCK_Q, BLOCK_K] fp32 scores of a loaded query block against the keys at k_ptrs ([D, BLOCK_K])."""
    k = tl.load(k_ptrs, mask=k_mask, other=0.0)
    s = tl.dot(q, k, input_precision=PRECISION, out_dtype=tl.float32) * scaling
    if HAS_SOFTCAP:
        s = softcap * _tanh(s / softcap)
    return s


@triton.jit
def _visible(
    offs_q,
    offs_k,
    b,
    n_queries,
    n_keys,
    query_offset,
    window,
    pad_ptr,
    stride_pad_b,
    dense_ptr,
    stride_dense_b,
    stride_dense_q,
    CAUSAL: tl.constexpr,
    HAS_WINDOW: tl.constexpr,
    HAS_PADDING: tl.constexpr,
    HAS_DENSE: tl.constexpr,
):
    """[len(offs_q), len(offs_k)] bool visibility, out-of-range rows and keys hidden."""
    vis = (offs_q[:, None] < n_queries) & (offs_k[None, :] < n_keys)
    if HAS_DENSE:
        d = tl.load(
            dense_ptr + b * stride_dense_b + offs_q[:, None] * stride_dense_q + offs_k[None, :],
            mask=vis,
            other=0,
        )
        vis = vis & (d != 0)
    else:
        q_abs = offs_q[:, None] + query_offset
        if CAUSAL:
            vis = vis & (offs_k[None, :] <= q_abs)
        if HAS_WINDOW:
            vis = vis & (q_abs - offs_k[None, :] < window)
        if HAS_PADDING:
            pad = tl.load(pad_ptr + b * stride_pad_b + offs_k, mask=offs_k < n_keys, other=0)
            vis = vis & (pad[None, :] != 0)
    return vis


@triton.jit
def row_kernel(
    Q,
    K,
    LSE,
    REGIONS,
    PAD,
    DENSE,
    ENTROPY,
    REGION_MASS,
    TOP_W,
    TOP_I,
    MAPS,
    MAP_SLOT,
    stride_qb,
    stride_qh,
    stride_qn,
    stride_kb,
    stride_kh,
    stride_kn,
    stride_pad_b,
    stride_dense_b,
    stride_dense_q,
    stride_mb,
    stride_mh,
    stride_mq,
    n_heads,
    n_queries,
    n_keys,
    d_head,
    group,
    n_regions,
    scaling,
    softcap,
    query_offset,
    window,
    top_k,
    BLOCK_Q: tl.constexpr,
    BLOCK_K: tl.constexpr,
    D_PAD: tl.constexpr,
    R_PAD: tl.constexpr,
    TOPK_PAD: tl.constexpr,
    HAS_LSE: tl.constexpr,
    CAUSAL: tl.constexpr,
    HAS_WINDOW: tl.constexpr,
    HAS_PADDING: tl.constexpr,
    HAS_DENSE: tl.constexpr,
    HAS_SOFTCAP: tl.constexpr,
    HAS_MAPS: tl.constexpr,
    PRECISION: tl.constexpr,
):
    pid_q = tl.program_id(0)
    pid_bh = tl.program_id(1)
    b = pid_bh // n_heads
    h = pid_bh % n_heads
    q_start = pid_q * BLOCK_Q
    offs_q = q_start + tl.arange(0, BLOCK_Q)
    offs_d = tl.arange(0, D_PAD)
    row_ok = offs_q < n_queries
    q = tl.load(
        Q + b * stride_qb + h * stride_qh + offs_q[:, None] * stride_qn + offs_d[None, :],
        mask=row_ok[:, None] & (offs_d[None, :] < d_head),
        other=0.0,
    )
    k_base = K + b * stride_kb + (h // group) * stride_kh
    row_base = pid_bh * n_queries

    # Keys any row of this block may see (structural mask); at least top_k of them for the top-k list.
    q_last = tl.minimum(q_start + BLOCK_Q, n_queries) - 1
    lo = 0
    hi = n_keys
    if not HAS_DENSE:
        if CAUSAL:
            hi = tl.minimum(n_keys, q_last + query_offset + 1)
        if HAS_WINDOW:
            lo = tl.maximum(0, q_start + query_offset - window + 1)
    hi = tl.maximum(hi, lo)
    if TOPK_PAD > 0:
        hi = tl.where(hi - lo < top_k, tl.minimum(n_keys, lo + top_k), hi)
        lo = tl.where(hi - lo < top_k, tl.maximum(0, hi - top_k), lo)
    lo = (lo // BLOCK_K) * BLOCK_K

    if HAS_LSE:
        lse = tl.load(LSE + row_base + offs_q, mask=row_ok, other=0.0)
    else:
        m = tl.full([BLOCK_Q], float("-inf"), tl.float32)
        acc = tl.zeros([BLOCK_Q], tl.float32)
        for k_start in range(lo, hi, BLOCK_K):
            offs_k = k_start + tl.arange(0, BLOCK_K)
            s = _scores(
                q,
                k_base + offs_k[None, :] * stride_kn + offs_d[:, None],
                (offs_k[None, :] < n_keys) & (offs_d[:, None] < d_head),
                scaling,
                softcap,
                HAS_SOFTCAP,
                PRECISION,
            )
            vis = _visible(
                offs_q,
                offs_k,
                b,
                n_queries,
                n_keys,
                query_offset,
                window,
                PAD,
                stride_pad_b,
                DENSE,
                stride_dense_b,
                stride_dense_q,
                CAUSAL,
                HAS_WINDOW,
                HAS_PADDING,
                HAS_DENSE,
            )
            s = tl.where(vis, s, float("-inf"))
            m_new = tl.maximum(m, tl.max(s, axis=1))
            m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
            acc = acc * tl.exp(m - m_safe) + tl.sum(tl.exp(s - m_safe[:, None]), axis=1)
            m = m_new
        lse = tl.where(acc > 0, m + tl.log(tl.where(acc > 0, acc, 1.0)), 0.0)
        tl.store(LSE + row_base + offs_q, lse, mask=row_ok)

    plogp = tl.zeros([BLOCK_Q], tl.float32)
    region_mass = tl.zeros([BLOCK_Q, R_PAD], tl.float32)
    offs_r = tl.arange(0, R_PAD)
    if TOPK_PAD > 0:
        top = tl.full([BLOCK_Q, TOPK_PAD], -1, tl.int64)
    if HAS_MAPS:
        slot = tl.load(MAP_SLOT + h)
    for k_start in range(lo, hi, BLOCK_K):
        offs_k = k_start + tl.arange(0, BLOCK_K)
        s = _scores(
            q,
            k_base + offs_k[None, :] * stride_kn + offs_d[:, None],
            (offs_k[None, :] < n_keys) & (offs_d[:, None] < d_head),
            scaling,
            softcap,
            HAS_SOFTCAP,
            PRECISION,
        )
        vis = _visible(
            offs_q,
            offs_k,
            b,
            n_queries,
            n_keys,
            query_offset,
            window,
            PAD,
            stride_pad_b,
            DENSE,
            stride_dense_b,
            stride_dense_q,
            CAUSAL,
            HAS_WINDOW,
            HAS_PADDING,
            HAS_DENSE,
        )
        log_p = s - lse[:, None]
        p = tl.where(vis, tl.exp(tl.where(vis, log_p, 0.0)), 0.0)
        plogp += tl.sum(p * log_p, axis=1)
        regions = tl.load(REGIONS + offs_k, mask=offs_k < n_keys, other=-1)
        one_hot = (regions[:, None] == offs_r[None, :]).to(tl.float32)
        region_mass += tl.dot(p, one_hot, input_precision="ieee", out_dtype=tl.float32)
        if TOPK_PAD > 0:
            # Pack (weight, key) into one sortable int64: p >= 0 sorts like its bits; ties go to the lower key.
            bits = p.to(tl.int32, bitcast=True).to(tl.int64)
            packed = (bits << 32) | (2147483647 - offs_k[None, :]).to(tl.int64)
            packed = tl.where(offs_k[None, :] < n_keys, packed, -1)
            best = tl.topk(packed, TOPK_PAD)
            top = tl.topk(tl.reshape(tl.join(top, best), [BLOCK_Q, 2 * TOPK_PAD]), TOPK_PAD)
        if HAS_MAPS:
            if slot >= 0:
                tl.store(
                    MAPS + b * stride_mb + slot * stride_mh + offs_q[:, None] * stride_mq + offs_k[None, :],
                    p,
                    mask=row_ok[:, None] & (offs_k[None, :] < n_keys),
                )

    tl.store(ENTROPY + row_base + offs_q, -plogp, mask=row_ok)
    tl.store(
        REGION_MASS + (row_base + offs_q[:, None]) * n_regions + offs_r[None, :],
        region_mass,
        mask=row_ok[:, None] & (offs_r[None, :] < n_regions),
    )
    if TOPK_PAD > 0:
        offs_t = tl.arange(0, TOPK_PAD)
        weight = (top >> 32).to(tl.int32).to(tl.float32, bitcast=True)
        index = 2147483647 - (top & 2147483647)
        out = (row_base + offs_q[:, None]) * top_k + offs_t[None, :]
        ok = row_ok[:, None] & (offs_t[None, :] < top_k)
        tl.store(TOP_W + out, weight, mask=ok)
        tl.store(TOP_I + out, index, mask=ok)


@triton.jit
def column_kernel(
    Q,
    K,
    LSE,
    PAD,
    DENSE,
    KEY_MASS,
    stride_qb,
    stride_qh,
    stride_qn,
    stride_kb,
    stride_kh,
    stride_kn,
    stride_pad_b,
    stride_dense_b,
    stride_dense_q,
    n_heads,
    n_queries,
    n_keys,
    d_head,
    group,
    scaling,
    softcap,
    query_offset,
    window,
    BLOCK_Q: tl.constexpr,
    BLOCK_K: tl.constexpr,
    D_PAD: tl.constexpr,
    CAUSAL: tl.constexpr,
    HAS_WINDOW: tl.constexpr,
    HAS_PADDING: tl.constexpr,
    HAS_DENSE: tl.constexpr,
    HAS_SOFTCAP: tl.constexpr,
    PRECISION: tl.constexpr,
):
    pid_k = tl.program_id(0)
    pid_bh = tl.program_id(1)
    b = pid_bh // n_heads
    h = pid_bh % n_heads
    k_start = pid_k * BLOCK_K
    offs_k = k_start + tl.arange(0, BLOCK_K)
    offs_d = tl.arange(0, D_PAD)
    key_ok = offs_k < n_keys
    # [BLOCK_K, D] keys; scores are computed transposed, s^T = k @ q^T, so the sum over queries is a row sum.
    k = tl.load(
        K + b * stride_kb + (h // group) * stride_kh + offs_k[:, None] * stride_kn + offs_d[None, :],
        mask=key_ok[:, None] & (offs_d[None, :] < d_head),
        other=0.0,
    )
    q_base = Q + b * stride_qb + h * stride_qh
    row_base = pid_bh * n_queries

    k_last = tl.minimum(k_start + BLOCK_K, n_keys) - 1
    lo = 0
    hi = n_queries
    if not HAS_DENSE:
        if CAUSAL:
            lo = tl.maximum(0, k_start - query_offset)
        if HAS_WINDOW:
            hi = tl.minimum(n_queries, k_last + window - query_offset)
    hi = tl.maximum(hi, lo)
    lo = (lo // BLOCK_Q) * BLOCK_Q

    col = tl.zeros([BLOCK_K], tl.float32)
    for q_start in range(lo, hi, BLOCK_Q):
        offs_q = q_start + tl.arange(0, BLOCK_Q)
        q_t = tl.load(
            q_base + offs_q[None, :] * stride_qn + offs_d[:, None],
            mask=(offs_q[None, :] < n_queries) & (offs_d[:, None] < d_head),
            other=0.0,
        )
        s_t = tl.dot(k, q_t, input_precision=PRECISION, out_dtype=tl.float32) * scaling
        if HAS_SOFTCAP:
            s_t = softcap * _tanh(s_t / softcap)
        vis = tl.trans(
            _visible(
                offs_q,
                offs_k,
                b,
                n_queries,
                n_keys,
                query_offset,
                window,
                PAD,
                stride_pad_b,
                DENSE,
                stride_dense_b,
                stride_dense_q,
                CAUSAL,
                HAS_WINDOW,
                HAS_PADDING,
                HAS_DENSE,
            )
        )
        lse = tl.load(LSE + row_base + offs_q, mask=offs_q < n_queries, other=0.0)
        log_p = s_t - lse[None, :]
        col += tl.sum(tl.where(vis, tl.exp(tl.where(vis, log_p, 0.0)), 0.0), axis=1)
    tl.store(KEY_MASS + pid_bh * n_keys + offs_k, col, mask=key_ok)
