"""The public entry point: implementation choice and dispatch (the result type lives in `result`)."""

from __future__ import annotations

from typing import Literal, Sequence

import torch

from .mask import MaskSpec
from .result import AttentionStatistics, expand_kv_heads

__all__ = ["AttentionStatistics", "IMPLEMENTATIONS", "MaskSpec", "attention_statistics", "expand_kv_heads",
           "resolve_implementation"]

Implementation = Literal["auto", "dense", "torch", "triton"]


def _triton_importable() -> bool:
    import importlib.util

    return importlib.util.find_spec("triton") is not None


# "triton" is listed where the package is importable; it still needs CUDA tensors (or TRITON_INTERPRET=1).
IMPLEMENTATIONS: tuple[str, ...] = ("dense", "torch") + (("triton",) if _triton_importable() else ())


def resolve_implementation(implementation: str, query: torch.Tensor, *, top_k: int = 0) -> str:
    """What "auto" picks for these inputs: triton on CUDA tensors where importable, else torch."""
    if implementation != "auto":
        if implementation not in IMPLEMENTATIONS:
            raise ValueError(
                f"unknown or unavailable implementation {implementation!r}; choose one of {('auto',) + IMPLEMENTATIONS}"
            )
        return implementation
    if query.is_cuda and "triton" in IMPLEMENTATIONS:
        from workbench.kernels.triton_stats import MAX_TOP_K

        if top_k <= MAX_TOP_K:
            return "triton"
    return "torch"


def _validate(
    query, key, *, mask: MaskSpec, key_regions, n_regions, top_k, map_heads, log_normaliser, softcap
):
    if query.ndim != 4 or key.ndim != 4:
        raise ValueError(
            f"query and key must be [batch, head, pos, d_head]; got {tuple(query.shape)}, {tuple(key.shape)}"
        )
    batch, n_heads, n_queries, d_head = query.shape
    if key.shape[0] != batch or key.shape[3] != d_head:
        raise ValueError(
            f"key {tuple(key.shape)} does not match query {tuple(query.shape)} in batch or d_head"
        )
    if n_heads % key.shape[1]:
        raise ValueError(f"{n_heads} query heads cannot share {key.shape[1]} key/value heads")
    n_keys = key.shape[2]
    if key_regions.shape != (n_keys,):
        raise ValueError(f"key_regions must be [key_pos={n_keys}]; got {tuple(key_regions.shape)}")
    if n_regions < 1:
        raise ValueError(f"n_regions must be >= 1; got {n_regions}")
    if n_keys and (int(key_regions.min()) < 0 or int(key_regions.max()) >= n_regions):
        raise ValueError(
            f"key_regions must lie in [0, {n_regions}); got [{int(key_regions.min())}, {int(key_regions.max())}]"
        )
    if top_k < 0:
        raise ValueError(f"top_k must be >= 0; got {top_k}")
    if map_heads is not None and any(not 0 <= h < n_heads for h in map_heads):
        raise ValueError(f"map_heads must lie in [0, {n_heads}); got {list(map_heads)}")
    if log_normaliser is not None and tuple(log_normaliser.shape) != (batch, n_heads, n_queries):
        raise ValueError(
            f"log_normaliser must be [batch, head, query_pos]={(batch, n_heads, n_queries)}; got {tuple(log_normaliser.shape)}"
        )
    if softcap is not None and not softcap > 0:
        raise ValueError(f"softcap must be a positive float or None; got {softcap}")
    if mask.dense is not None and (
        mask.dense.ndim != 4
        or mask.dense.shape[1] != 1
        or mask.dense.shape[2:] != (n_queries, n_keys)
        or mask.dense.shape[0] not in (1, batch)
    ):
        raise ValueError(
            f"MaskSpec.dense must be [batch|1, 1, {n_queries}, {n_keys}]; got {tuple(mask.dense.shape)}"
        )
    if mask.key_padding is not None and tuple(mask.key_padding.shape) != (batch, n_keys):
        raise ValueError(
            f"MaskSpec.key_padding must be [batch, key_pos]={(batch, n_keys)}; got {tuple(mask.key_padding.shape)}"
        )
    if mask.sliding_window is not None and mask.sliding_window < 1:
        raise ValueError(f"MaskSpec.sliding_window must be >= 1; got {mask.sliding_window}")


def attention_statistics(
    query: torch.Tensor,
    key: torch.Tensor,
    *,
    scaling: float,
    mask: MaskSpec,
    key_regions: torch.Tensor,
    n_regions: int,
    top_k: int = 0,
    map_heads: Sequence[int] | None = None,
    implementation: Implementation = "auto",
    log_normaliser: torch.Tensor | None = None,
    softcap: float | None = None,
    block_size: tuple[int, int] | None = None,
) -> AttentionStatistics:
    """Statistics of softmax(softcap(scaling * query @ key^T) + mask) per query head, never the whole map.

    query: [batch, head, query_pos, d_head] (post-RoPE); key: [batch, kv_head, key_pos, d_head];
    key_regions: [key_pos] integer region id of every key, in [0, n_regions).
    map_heads: heads whose full [query_pos, key_pos] map is also returned (None: none).
    implementation: "auto" (triton on CUDA tensors where importable, else torch), "torch" (block-wise,
        bounded memory), "triton" (fused kernels; CUDA, or CPU tensors under TRITON_INTERPRET=1) or "dense"
        (materialises every map: the reference).
    log_normaliser: [batch, head, query_pos] row log-sum-exp of the same scores from the forward (the
        logsumexp output of the flash / memory-efficient SDPA kernels); saves one pass. If it does not belong
        to these scores, normaliser Z departs from 1: that is the self-check. Ignored by "dense".
    softcap: logit soft-capping s = softcap * tanh(s / softcap) (Gemma 2), or None.
    block_size: (block_q, block_k) of the bounded-memory implementations, or None for their default.

    >>> import torch
    >>> from workbench.kernels import MaskSpec, attention_statistics
    >>> q, k = torch.randn(1, 4, 6, 8), torch.randn(1, 2, 6, 8)    # GQA: 4 query heads share 2 kv heads
    >>> s = attention_statistics(q, k, scaling=8 ** -0.5, mask=MaskSpec(causal=True),
    ...                          key_regions=torch.zeros(6, dtype=torch.long), n_regions=1, map_heads=[0])
    >>> tuple(s.key_mass.shape), tuple(s.maps.shape)
    ((1, 4, 6), (1, 1, 6, 6))
    >>> bool(torch.allclose(s.key_mass[0, 0], s.maps[0, 0].sum(0), atol=1e-5)), s.key_count[0].tolist()
    (True, [6, 5, 4, 3, 2, 1])
    """
    _validate(
        query,
        key,
        mask=mask,
        key_regions=key_regions,
        n_regions=n_regions,
        top_k=top_k,
        map_heads=map_heads,
        log_normaliser=log_normaliser,
        softcap=softcap,
    )
    chosen = resolve_implementation(implementation, query, top_k=top_k)
    common = dict(
        scaling=scaling,
        mask=mask,
        key_regions=key_regions,
        n_regions=n_regions,
        top_k=top_k,
        map_heads=map_heads,
        softcap=softcap,
    )
    if chosen == "dense":
        from workbench.kernels.dense import dense_attention_statistics

        return dense_attention_statistics(query, key, **common)
    if chosen == "torch":
        from workbench.kernels.blockwise import blockwise_attention_statistics

        return blockwise_attention_statistics(
            query, key, log_normaliser=log_normaliser, block_size=block_size, **common
        )
    from workbench.kernels.triton_stats import triton_attention_statistics

    return triton_attention_statistics(
        query, key, log_normaliser=log_normaliser, block_size=block_size, **common
    )
