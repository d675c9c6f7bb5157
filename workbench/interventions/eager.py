"""Eager attention for the heads an intervention touches: which keys a query sees, softmax(q.k) in fp32 as SDPA
computes it, per-head values, and the output rows recomputed as P' @ V."""

from __future__ import annotations

import torch


def visibility(attention_mask, *, causal: bool, n_queries: int, n_keys: int) -> torch.Tensor:
    """[batch or 1, 1, query_pos, key_pos] bool: which keys each query sees, read as SDPA reads the mask."""
    if attention_mask is None:
        visible = torch.ones(n_queries, n_keys, dtype=torch.bool)
        if causal and n_queries > 1:  # SDPA's is_causal: top-left aligned
            visible = visible.tril()
        return visible[None, None]
    mask = attention_mask[..., :n_keys]
    return (mask if mask.dtype == torch.bool else mask > torch.finfo(mask.dtype).min / 2).cpu()


def probabilities(query, key, attention_mask, *, scaling: float, causal: bool, heads=None) -> torch.Tensor:
    """Post-softmax attention [batch, head, query_pos, key_pos] (fp32) of `heads` (None: all), GQA expanded."""
    n_heads, n_kv = query.shape[1], key.shape[1]
    heads = list(range(n_heads)) if heads is None else list(heads)
    kv = [h // (n_heads // n_kv) for h in heads]
    scores = query[:, heads].float() @ key[:, kv].float().transpose(-1, -2) * scaling
    visible = visibility(attention_mask, causal=causal, n_queries=query.shape[2], n_keys=key.shape[2])
    scores = scores.masked_fill(~visible.to(scores.device), float("-inf"))
    return torch.softmax(scores, -1).nan_to_num(0.0)


def head_values(value, heads, n_heads: int) -> torch.Tensor:
    """[batch, len(heads), key_pos, d_head] values of query heads `heads` (GQA expanded), fp32."""
    group = n_heads // value.shape[1]
    return value[:, [h // group for h in heads]].float()


def replace_rows(output, heads, new_probs, value, rows) -> torch.Tensor:
    """output [batch, query_pos, head, d_head] with rows[b, i, q] of heads[i] recomputed as new_probs @ value."""
    if not bool(rows.any()):
        return output
    output = output.clone()
    recomputed = new_probs @ head_values(value, heads, output.shape[2])  # [batch, h, query_pos, d_head]
    for index, head in enumerate(heads):
        keep = rows[:, index, :, None].to(output.device)
        output[:, :, head] = torch.where(keep, recomputed[:, index].to(output.dtype), output[:, :, head])
    return output
