"""Attention statistics without keeping n x n maps (docs/kernels.md, 'Statistics without the map').

One function family: `attention_statistics(query, key, scaling=..., mask=..., key_regions=..., n_regions=...)`
returns, per query head (GQA expanded), what the analyses need: the attention mass each key receives and
how many queries see it (sinks), per-query mass and key count per region (lookback ratio, image share),
per-query entropy and the normaliser Z (must be 1: a free self-check), optionally top-k keys and full
maps of chosen heads. Two passes: the row log-sum-exp (pass `log_normaliser=` from the forward, see
`sdpa_with_log_normaliser`, or it is computed), then exact probabilities recomputed block by block.

Implementations, chosen by `implementation=` ("auto": triton on CUDA tensors where importable, else torch):
- "dense": materialises the map of all heads (the reference; tests and short inputs).
- "torch": block-wise in plain torch, bounded working set (see `workbench.kernels.blockwise`); CPU default.
- "triton": fused row and column kernels, deterministic (no atomics); CUDA, or CPU under TRITON_INTERPRET=1.
Masks: causal with query_offset (KV cache), sliding window, key padding, or any dense mask; logit
soft-capping via `softcap=`. docs/kernels.md has the memory bound and the accuracy statement.

Shapes use the axis vocabulary of `workbench.trace`: batch, head, kv_head, query_pos, key_pos, region, d_head.
This package imports torch only (triton lazily, on first use of the triton implementation).
"""

from workbench.kernels.api import (
    IMPLEMENTATIONS,
    AttentionStatistics,
    MaskSpec,
    attention_statistics,
    resolve_implementation,
)
from workbench.kernels.forward import sdpa_with_log_normaliser

__all__ = [
    "AttentionStatistics",
    "MaskSpec",
    "attention_statistics",
    "IMPLEMENTATIONS",
    "resolve_implementation",
    "sdpa_with_log_normaliser",
]
