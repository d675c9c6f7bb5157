"""The one-pass CPU kernel: statistics equal the dense reference, output equals an fp64 attention."""

from __future__ import annotations

import pytest
import torch
from workbench.kernels import MaskSpec, attention_statistics, fused_cpu

pytestmark = pytest.mark.skipif(not fused_cpu.load(), reason="the fused CPU kernel could not be built here")

# The CASES entries inside the kernel's scope (no key padding, irregular dense masks, softcap, bf16).
IN_SCOPE = ("causal_gqa_6_2", "bidirectional_gqa_9_3", "decode_one_row", "chunked_prefill", "one_region",
            "sliding_window", "sliding_window_decode")


def _reference_output(query, key, value, scaling, mask: MaskSpec):
    """softmax(s) v in fp64 over the dense visibility, as [batch, query_pos, head, d_head]."""
    group = query.shape[1] // key.shape[1]
    key64, value64 = key.double().repeat_interleave(group, 1), value.double().repeat_interleave(group, 1)
    scores = query.double() @ key64.transpose(-1, -2) * scaling
    visible = mask.block(0, query.shape[2], 0, key.shape[2])
    probs = scores.masked_fill(~visible, float("-inf")).softmax(-1)
    return (probs @ value64).transpose(1, 2), scores.masked_fill(~visible, float("-inf")).logsumexp(-1)


def _run(case, block_q=fused_cpu.DEFAULT_BLOCK_Q, seed=0, path="auto"):
    query, key, kwargs = case.build(seed=seed)
    value = torch.randn(key.shape, generator=torch.Generator().manual_seed(seed + 1))
    out, lse, stats = fused_cpu.fused_attention(
        query, key, value, scaling=kwargs["scaling"], mask=kwargs["mask"], key_regions=kwargs["key_regions"],
        n_regions=kwargs["n_regions"], block_q=block_q, path=path,
    )
    return query, key, value, kwargs, out, lse, stats


# 7: blocks cut every size unevenly; "decode": the per-row path (any row count, forced here)
PATHS = [("blocked", 7), ("blocked", fused_cpu.DEFAULT_BLOCK_Q), ("decode", None)]


@pytest.mark.cases(*IN_SCOPE)
@pytest.mark.parametrize("path,block_q", PATHS, ids=["blocked-7", "blocked-128", "decode"])
def test_equals_dense_reference(case, path, block_q, stats_equal):
    query, key, value, kwargs, out, lse, stats = _run(case, block_q or fused_cpu.DEFAULT_BLOCK_Q, path=path)
    dense = attention_statistics(query, key, implementation="dense", **{**kwargs, "top_k": 0, "map_heads": None})
    stats_equal(stats, dense)
    want_out, want_lse = _reference_output(query, key, value, kwargs["scaling"], kwargs["mask"])
    torch.testing.assert_close(out.double(), want_out, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(lse.double(), want_lse, rtol=1e-6, atol=1e-5)


def _dense(visible: torch.Tensor) -> MaskSpec:
    return MaskSpec(dense=visible[None, None])


def _interval_masks(n_queries: int, n_keys: int, offset: int) -> dict[str, MaskSpec]:
    """Masks whose rows each see one run of keys, written out densely the way a model hands them over (query row
    i sits at position i + offset): chunked-local attention (Llama 4), a prefix-LM (PaliGemma), a sliding window."""
    q = torch.arange(n_queries)[:, None] + offset
    k = torch.arange(n_keys)[None, :]
    causal = k <= q
    prefix = 12
    return {
        "chunked_local": _dense(causal & (k // 16 == q // 16)),
        "prefix_lm": _dense(causal | ((k < prefix) & (q < prefix))),
        "sliding_dense": _dense(causal & (q - k < 9)),
        "bidirectional_window": _dense((q - k).abs() <= 5),
    }


@pytest.mark.parametrize("shape", [(70, 70, 0), (5, 70, 65), (1, 70, 69)], ids=["prefill", "chunk", "decode"])
@pytest.mark.parametrize("name", ["chunked_local", "prefix_lm", "sliding_dense", "bidirectional_window"])
@pytest.mark.parametrize("path,block_q", PATHS, ids=["blocked-7", "blocked-128", "decode"])
def test_dense_interval_masks_equal_dense_reference(name, shape, path, block_q, stats_equal):
    from tests.kernels.conftest import Case

    n_queries, n_keys, offset = shape
    mask = _interval_masks(n_queries, n_keys, offset)[name]
    query, key, kwargs = Case(1, 6, 2, n_queries, n_keys, regions="runs").build(seed=5)
    kwargs = {**kwargs, "mask": mask, "top_k": 0, "map_heads": None}
    value = torch.randn(key.shape, generator=torch.Generator().manual_seed(6))
    assert fused_cpu.applies(query, key, value, mask)
    out, lse, stats = fused_cpu.fused_attention(query, key, value, scaling=kwargs["scaling"], mask=mask,
                                                key_regions=kwargs["key_regions"], n_regions=kwargs["n_regions"],
                                                block_q=block_q or fused_cpu.DEFAULT_BLOCK_Q, path=path)
    stats_equal(stats, attention_statistics(query, key, implementation="dense", **kwargs))
    want_out, want_lse = _reference_output(query, key, value, kwargs["scaling"], mask)
    torch.testing.assert_close(out.double(), want_out, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(lse.double(), want_lse, rtol=1e-6, atol=1e-5)


def test_output_matches_sdpa_and_long_rows_cross_blocks():
    # 300 queries: two full 128-row blocks and a partial one; GQA 9:3 as in SmolLM2; runs of three regions
    query, key, value = torch.randn(1, 9, 300, 64), torch.randn(1, 3, 300, 64), torch.randn(1, 3, 300, 64)
    regions = torch.cat([torch.zeros(1), torch.ones(250), torch.full((49,), 2)]).long()
    out, _, stats = fused_cpu.fused_attention(query, key, value, scaling=0.125, mask=MaskSpec(causal=True),
                                              key_regions=regions, n_regions=3)
    sdpa = torch.nn.functional.scaled_dot_product_attention(query, key, value, is_causal=True, scale=0.125,
                                                             enable_gqa=True)
    torch.testing.assert_close(out.transpose(1, 2), sdpa, rtol=1e-5, atol=1e-5)
    dense = attention_statistics(query, key, scaling=0.125, mask=MaskSpec(causal=True), key_regions=regions,
                                 n_regions=3, implementation="dense")
    for name in ("key_mass", "region_mass", "entropy", "normaliser"):
        torch.testing.assert_close(getattr(stats, name), getattr(dense, name), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("n_queries", [1, 3])
def test_decode_over_a_long_cache_matches_sdpa_and_dense(n_queries):
    # SmolLM2's shape (9 query heads over 3 kv heads, d_head 64) at a decode step over 712 cached keys; the query
    # arrives as transformers hands it over: a [batch, query_pos, head, d_head] tensor viewed as [.., head, ..]
    n_keys = 712
    generator = torch.Generator().manual_seed(11)
    query = torch.randn(1, n_queries, 9, 64, generator=generator).transpose(1, 2)
    key, value = torch.randn(1, 3, n_keys, 64, generator=generator), torch.randn(1, 3, n_keys, 64, generator=generator)
    regions = torch.cat([torch.zeros(1), torch.ones(600), torch.full((n_keys - 601,), 2)]).long()
    mask = MaskSpec(causal=True, query_offset=n_keys - n_queries)
    out, lse, stats = fused_cpu.fused_attention(query, key, value, scaling=0.125, mask=mask, key_regions=regions,
                                                n_regions=3)
    sdpa = torch.nn.functional.scaled_dot_product_attention(
        query, key, value, attn_mask=mask.block(0, n_queries, 0, n_keys), scale=0.125, enable_gqa=True)
    torch.testing.assert_close(out.transpose(1, 2), sdpa, rtol=1e-5, atol=1e-5)
    want_out, want_lse = _reference_output(query, key, value, 0.125, mask)
    torch.testing.assert_close(out.double(), want_out, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(lse.double(), want_lse, rtol=1e-6, atol=1e-5)
    dense = attention_statistics(query, key, scaling=0.125, mask=mask, key_regions=regions, n_regions=3,
                                 implementation="dense")
    for name in ("key_mass", "region_mass", "entropy", "normaliser", "key_count", "region_count"):
        torch.testing.assert_close(getattr(stats, name), getattr(dense, name), rtol=1e-5, atol=1e-6)


def test_precomputed_runs_and_counts_are_used_as_given():
    # a caller with many layers over the same keys hands runs and counts in once computed; the kernel must use
    # them, not recompute (planted counts that differ from the true ones come back unchanged)
    query, key, value = torch.randn(1, 4, 1, 16), torch.randn(1, 2, 30, 16), torch.randn(1, 2, 30, 16)
    regions = (torch.arange(30) // 10).long()
    planted = (torch.full((1, 30), 7), torch.full((1, 1, 3), 5))
    runs = fused_cpu.region_runs_tensor(regions)
    assert runs.tolist() == [[0, 10, 0], [10, 20, 1], [20, 30, 2]]
    _, _, stats = fused_cpu.fused_attention(query, key, value, scaling=0.25, mask=MaskSpec(causal=True, query_offset=29),
                                            key_regions=regions, n_regions=3, runs=runs, counts=planted)
    assert stats.key_count is planted[0] and stats.region_count is planted[1]
    dense = attention_statistics(query, key, scaling=0.25, mask=MaskSpec(causal=True, query_offset=29),
                                 key_regions=regions, n_regions=3, implementation="dense")
    torch.testing.assert_close(stats.region_mass, dense.region_mass, rtol=1e-5, atol=1e-6)


def test_extreme_scores_flush_to_zero_without_nan():
    from workbench.kernels.dense import dense_probabilities

    from tests.kernels.conftest import Case

    query, key, kwargs = Case(1, 4, 2, 40, 40, mask={"causal": True}).build(seed=3)
    query = query * 40.0  # scores spread over thousands: most p underflow
    _, probs, _ = dense_probabilities(query, key, scaling=kwargs["scaling"], mask=kwargs["mask"], softcap=None)
    assert (torch.log(probs[probs > 0]) < -87.4).float().mean() > 0.2  # really reaches the subnormal range
    value = torch.randn(key.shape)
    out, _, stats = fused_cpu.fused_attention(query, key, value, scaling=kwargs["scaling"], mask=kwargs["mask"],
                                              key_regions=kwargs["key_regions"], n_regions=kwargs["n_regions"])
    assert torch.isfinite(out).all()
    dense = attention_statistics(query, key, implementation="dense", **kwargs)
    for name in ("key_mass", "region_mass", "normaliser"):
        torch.testing.assert_close(getattr(stats, name), getattr(dense, name), rtol=1e-5, atol=1e-6)
    # entropy of rows this peaked is limited by fp32 scores (docs/kernels.md): ~1e-5 nats of fp64
    scores64 = query.double() @ key.double().repeat_interleave(2, 1).transpose(-1, -2) * kwargs["scaling"]
    log_p = scores64.masked_fill(~kwargs["mask"].block(0, 40, 0, 40), float("-inf")).log_softmax(-1)
    entropy64 = -(log_p.exp() * log_p.nan_to_num(neginf=0.0)).sum(-1)
    torch.testing.assert_close(stats.entropy.double(), entropy64, rtol=0, atol=1e-5)


@pytest.mark.parametrize("n_queries,n_keys", [(400, 400), (2, 6000)], ids=["blocked", "decode"])
def test_results_do_not_depend_on_thread_count(n_queries, n_keys):
    # decode: 2 rows x 6,000 keys is large enough for the decode path to spread its key heads over threads
    query, key, value = torch.randn(1, 6, n_queries, 32), torch.randn(1, 2, n_keys, 32), torch.randn(1, 2, n_keys, 32)
    regions = (torch.arange(n_keys) // 150).clamp_max(2)
    mask = MaskSpec(causal=True, query_offset=n_keys - n_queries)
    previous = torch.get_num_threads()
    results = []
    try:
        for threads in (1, 2):
            torch.set_num_threads(threads)
            results.append(fused_cpu.fused_attention(query, key, value, scaling=0.2, mask=mask,
                                                     key_regions=regions, n_regions=3, block_q=32))
    finally:
        torch.set_num_threads(previous)
    (out1, lse1, s1), (out2, lse2, s2) = results
    assert torch.equal(out1, out2) and torch.equal(lse1, lse2)
    for name in ("key_mass", "region_mass", "entropy", "normaliser"):
        assert torch.equal(getattr(s1, name), getattr(s2, name)), name


@pytest.mark.parametrize("change", ["bf16", "padding", "dense_with_holes"])
def test_out_of_scope_inputs_are_declined(change):
    query, key, value = torch.randn(1, 2, 8, 8), torch.randn(1, 2, 8, 8), torch.randn(1, 2, 8, 8)
    mask = MaskSpec(causal=True)
    if change == "bf16":
        query = query.bfloat16()
    elif change == "padding":
        mask = MaskSpec(causal=True, key_padding=torch.ones(1, 8, dtype=torch.bool))
    else:  # row 5 sees keys 0-1 and 4-5: two runs, which one interval per row cannot express
        visible = torch.ones(8, 8, dtype=torch.bool).tril()
        visible[5, 2:4] = False
        mask = _dense(visible)
    assert not fused_cpu.applies(query, key, value, mask)
    if change == "dense_with_holes":
        assert fused_cpu.unsupported(query, key, value, mask) == fused_cpu.MASK_OUT_OF_SCOPE
    with pytest.raises(ValueError, match="fused_attention needs"):
        fused_cpu.fused_attention(query, key, value, scaling=1.0, mask=mask,
                                  key_regions=torch.zeros(8, dtype=torch.long), n_regions=1)


def test_switched_off_by_environment(monkeypatch):
    monkeypatch.setenv("WORKBENCH_FUSED_CPU", "0")
    fused_cpu.load.cache_clear()
    try:
        assert not fused_cpu.load()
    finally:
        monkeypatch.delenv("WORKBENCH_FUSED_CPU")
        fused_cpu.load.cache_clear()
    assert fused_cpu.load()


def test_build_directory_lives_in_the_workbench_cache(monkeypatch, tmp_path):
    # kernels look the cache up themselves (they import torch only): it must be the weights' cache folder.
    monkeypatch.setenv("WORKBENCH_CACHE", str(tmp_path / "cache"))
    assert fused_cpu.build_directory().parent == tmp_path / "cache" / "extensions"
    monkeypatch.delenv("WORKBENCH_CACHE")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert fused_cpu.build_directory().parent == tmp_path / "home" / ".cache" / "workbench" / "extensions"
