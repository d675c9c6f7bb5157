"""The attention forward with its row log-sum-exp, which the statistics take as `log_normaliser`.

The fused SDPA kernels compute lse_i = log sum_j exp(s_ij) anyway; returning it saves the statistics
one pass over the scores. CPU: `aten._scaled_dot_product_flash_attention_for_cpu` is what
F.scaled_dot_product_attention runs for these inputs, so the output is bit-identical to it (checked for
fp32 and bf16, causal, bool and additive masks, GQA). CUDA: the flash kernel (fp16/bf16, no mask) or the
memory-efficient one (the latter pads lse to a multiple of 32 keys: sliced here). Where no fused kernel
applies (dropout, differing value head size, an unsupported mask) the output comes from
F.scaled_dot_product_attention and the lse is None: the statistics then compute it themselves.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def _additive(mask: torch.Tensor | None, dtype: torch.dtype) -> torch.Tensor | None:
    if mask is None or mask.dtype != torch.bool:
        return None if mask is None else mask.to(dtype)
    return torch.zeros(mask.shape, dtype=dtype, device=mask.device).masked_fill_(~mask, float("-inf"))


def sdpa_with_log_normaliser(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    *,
    scaling: float,
    attn_mask: torch.Tensor | None = None,
    is_causal: bool = False,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """softmax(scaling * query @ key^T + mask) @ value and lse [batch, head, query_pos] fp32 (or None).

    query: [batch, head, query_pos, d_head]; key, value: [batch, kv_head, key_pos, d_head] (GQA: consecutive
    query heads share a kv head); attn_mask: bool (True = visible) or additive, broadcastable to
    [batch, head, query_pos, key_pos]; is_causal: top-left aligned, as in F.scaled_dot_product_attention.
    Rows that see no key get an arbitrary lse (0 on CPU): the statistics ignore it for such rows.

    >>> import torch
    >>> q, k, v = torch.randn(1, 2, 5, 8), torch.randn(1, 2, 5, 8), torch.randn(1, 2, 5, 8)
    >>> out, lse = sdpa_with_log_normaliser(q, k, v, scaling=8 ** -0.5, is_causal=True)
    >>> scores = q @ k.transpose(-1, -2) * 8 ** -0.5 + torch.full((5, 5), float("-inf")).triu(1)
    >>> bool(torch.allclose(lse, scores.logsumexp(-1), atol=1e-5))
    True
    """
    if attn_mask is not None and is_causal:
        raise ValueError("pass either attn_mask or is_causal, as for F.scaled_dot_product_attention")
    n_queries = query.shape[2]
    group = query.shape[1] // key.shape[1]
    try:
        if query.device.type == "cpu":
            out, lse = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(
                query,
                key,
                value,
                0.0,
                is_causal,
                attn_mask=_additive(attn_mask, query.dtype),
                scale=scaling,
            )
            return out, lse
        if query.is_cuda:
            key_x, value_x = (
                (key, value)
                if group == 1
                else (key.repeat_interleave(group, 1), value.repeat_interleave(group, 1))
            )
            if attn_mask is None and query.dtype in (torch.float16, torch.bfloat16):
                out = torch.ops.aten._scaled_dot_product_flash_attention(
                    query, key_x, value_x, 0.0, is_causal, False, scale=scaling
                )
                return out[0], out[1]
            bias = _additive(attn_mask, query.dtype)
            if bias is not None:
                bias = bias.expand(query.shape[0], query.shape[1], n_queries, key.shape[2])
            out = torch.ops.aten._scaled_dot_product_efficient_attention(
                query,
                key_x,
                value_x,
                bias,
                True,
                0.0,
                is_causal,
                scale=scaling,
            )
            return out[0], out[1][..., :n_queries]
    except (RuntimeError, NotImplementedError):
        pass  # no fused kernel for these inputs: plain SDPA below, lse left to the statistics
    out = F.scaled_dot_product_attention(
        query, key, value, attn_mask=attn_mask, is_causal=is_causal, scale=scaling, enable_gqa=group > 1
    )
    return out, None
