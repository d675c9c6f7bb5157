"""Reference implementation: builds the full [batch, head, query_pos, key_pos] map in fp32.

O(batch * head * query_pos * key_pos) memory. Exact and simple, so the other implementations are tested
against it; the capture uses it one layer at a time until a bounded-memory implementation is selected.
"""

from __future__ import annotations

from typing import Sequence

import torch

from .result import AttentionStatistics, expand_kv_heads
from .mask import MaskSpec


def dense_probabilities(
    query: torch.Tensor, key: torch.Tensor, *, scaling: float, mask: MaskSpec, softcap: float | None = None,
):
    """Scores and probabilities [batch, head, query_pos, key_pos] (fp32) and visibility [batch|1, 1, q, k].

    softcap: logit soft-capping (Gemma 2) applied to the scaled scores, s = softcap * tanh(s / softcap).
    """
    key = expand_kv_heads(key, query.shape[1])
    scores = scaling * torch.matmul(query.float(), key.float().transpose(-1, -2))
    if softcap is not None:
        scores = softcap * torch.tanh(scores / softcap)
    visible = mask.block(0, query.shape[2], 0, key.shape[2], device=query.device)
    scores = scores.masked_fill(~visible, float("-inf"))
    log_normaliser = torch.logsumexp(scores, dim=-1, keepdim=True)
    # Rows that see no key at all (padding queries) get all-zero probabilities instead of NaN.
    safe_log_normaliser = torch.where(torch.isfinite(log_normaliser), log_normaliser, torch.zeros_like(log_normaliser))
    probs = torch.exp(scores - safe_log_normaliser).masked_fill(~visible, 0.0)
    return scores, probs, visible


def dense_attention_statistics(
    query: torch.Tensor,
    key: torch.Tensor,
    *,
    scaling: float,
    mask: MaskSpec,
    key_regions: torch.Tensor,
    n_regions: int,
    top_k: int = 0,
    map_heads: Sequence[int] | None = None,
    softcap: float | None = None,
) -> AttentionStatistics:
    scores, probs, visible = dense_probabilities(query, key, scaling=scaling, mask=mask, softcap=softcap)
    batch, n_heads, n_queries, n_keys = probs.shape
    visible = visible.expand(batch, 1, n_queries, n_keys)[:, 0]  # [batch, query_pos, key_pos]
    region_one_hot = torch.nn.functional.one_hot(key_regions.long().to(probs.device), n_regions).float()
    plogs = torch.where(probs > 0, probs * torch.log(probs.clamp_min(1e-45)), torch.zeros_like(probs))
    top_index = top_weight = None
    if top_k:
        top_weight, top_index = probs.topk(min(top_k, n_keys), dim=-1)
    maps = probs[:, list(map_heads)].clone() if map_heads else None
    return AttentionStatistics(
        key_mass=probs.sum(dim=2),
        key_count=visible.sum(dim=1).long(),
        region_mass=probs @ region_one_hot,
        region_count=(visible.float() @ region_one_hot).long(),
        entropy=-plogs.sum(dim=-1),
        normaliser=probs.sum(dim=-1),
        top_index=top_index,
        top_weight=top_weight,
        maps=maps,
    )
