"""sdpa_with_log_normaliser: the exact SDPA output plus the lse the statistics take from the forward."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from workbench.kernels import MaskSpec, attention_statistics, sdpa_with_log_normaliser


def _qkv(dtype=torch.float32, n=37, d=16, heads=6, kv_heads=2, batch=2):
    gen = torch.Generator().manual_seed(0)
    return [torch.randn(batch, h, n, d, generator=gen).to(dtype) for h in (heads, kv_heads, kv_heads)]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("masking", ["causal", "bool", "additive", "none"])
def test_output_is_bit_identical_to_sdpa_and_lse_is_exact(dtype, masking):
    query, key, value = _qkv(dtype)
    visible = torch.rand(2, 1, 37, 37, generator=torch.Generator().manual_seed(1)) > 0.3
    visible[..., 0] = True
    mask = {
        "bool": visible,
        "additive": torch.zeros(visible.shape, dtype=dtype).masked_fill(~visible, float("-inf")),
    }.get(masking)
    causal = masking == "causal"
    out, lse = sdpa_with_log_normaliser(query, key, value, scaling=0.25, attn_mask=mask, is_causal=causal)
    want = F.scaled_dot_product_attention(
        query, key, value, attn_mask=mask, is_causal=causal, scale=0.25, enable_gqa=True
    )
    assert torch.equal(out, want)
    scores = 0.25 * query.float() @ key.float().repeat_interleave(3, 1).transpose(-1, -2)
    if causal:
        scores = scores.masked_fill(~torch.ones(37, 37, dtype=torch.bool).tril(), float("-inf"))
    elif mask is not None:
        scores = scores.masked_fill(~visible, float("-inf"))
    # bf16: the fused kernel rounds its probabilities to bf16 internally; lse stays within ~1e-4 (absolute).
    tol = dict(rtol=1e-5, atol=1e-5) if dtype == torch.float32 else dict(rtol=0, atol=3e-4)
    torch.testing.assert_close(lse, scores.logsumexp(-1), **tol)


def test_bf16_forward_lse_keeps_the_self_check_within_tolerance():
    query, key, value = _qkv(torch.bfloat16, n=200, d=64)
    _, lse = sdpa_with_log_normaliser(query, key, value, scaling=0.125, is_causal=True)
    kw = dict(
        scaling=0.125, mask=MaskSpec(causal=True), key_regions=torch.zeros(200, dtype=torch.long), n_regions=1
    )
    got = attention_statistics(query, key, implementation="torch", log_normaliser=lse, **kw)
    want = attention_statistics(query, key, implementation="dense", **kw)
    torch.testing.assert_close(got.normaliser, torch.ones_like(got.normaliser), rtol=0, atol=3e-4)
    torch.testing.assert_close(got.entropy, want.entropy, rtol=0, atol=3e-4)


def test_lse_feeds_the_statistics():
    query, key, value = _qkv()
    pad = torch.ones(2, 37, dtype=torch.bool)
    pad[0, :6] = False
    spec = MaskSpec(causal=True, key_padding=pad)
    _, lse = sdpa_with_log_normaliser(query, key, value, scaling=0.25, attn_mask=spec.block(0, 37, 0, 37))
    kw = dict(scaling=0.25, mask=spec, key_regions=torch.zeros(37, dtype=torch.long), n_regions=1)
    got = attention_statistics(query, key, implementation="torch", log_normaliser=lse, **kw)
    want = attention_statistics(query, key, implementation="dense", **kw)
    torch.testing.assert_close(got.normaliser, want.normaliser, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(got.entropy, want.entropy, rtol=1e-5, atol=1e-6)


def test_no_fused_kernel_falls_back_without_lse():
    query, key, _ = _qkv()
    value = torch.randn(2, 2, 37, 8)  # value head size differs from d_head: the fused CPU kernel refuses it
    out, lse = sdpa_with_log_normaliser(query, key, value, scaling=0.25, is_causal=True)
    assert lse is None
    assert torch.equal(
        out, F.scaled_dot_product_attention(query, key, value, is_causal=True, scale=0.25, enable_gqa=True)
    )
