"""Attention statistics without keeping n x n maps (METHODS.md section 8).

One function family: `attention_statistics(query, key, scaling=..., mask=..., key_regions=..., n_regions=...)`
returns, per query head (GQA expanded), what the analyses need: the attention mass each key receives and
how many queries see it (sinks), per-query mass and key count per region (lookback ratio, image share),
per-query entropy and the normaliser Z (must be 1: a free self-check), optionally top-k keys and full
maps of chosen heads.

Implementations, chosen by `implementation=`:
- "dense": materialises the map of all heads (the reference; tests and short inputs).

Shapes use the axis vocabulary of `workbench.trace`: batch, head, kv_head, query_pos, key_pos, region, d_head.
This package imports torch only.
"""

from .api import (
    IMPLEMENTATIONS,
    AttentionStatistics,
    MaskSpec,
    attention_statistics,
)

__all__ = ["AttentionStatistics", "MaskSpec", "attention_statistics", "IMPLEMENTATIONS"]

# Imports inside this package are relative on purpose: when Python runs from the repository root, this
# folder is also importable as a top-level `kernels`, which transformers probes for (Hugging Face's hub
# `kernels` library). Relative imports keep that probe harmless: it imports, reports no version and is
# treated as absent.
