"""The Triton implementation equals the dense reference: under TRITON_INTERPRET=1 on CPU (CI), or on CUDA.

The interpreter is selected before triton is first imported (it is read when kernels are decorated), so
this module sets TRITON_INTERPRET=1 at import time unless CUDA is available. Interpreted kernels are
slow: the shapes stay tiny, but still span several 16 x 16 blocks with sizes that are not multiples of 16.
"""

from __future__ import annotations

import dataclasses
import os

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

pytest.importorskip("triton")

from workbench.kernels import IMPLEMENTATIONS, MaskSpec, attention_statistics  # noqa: E402

INTERPRETED = not torch.cuda.is_available()
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"

# Smaller versions of the shared cases (the interpreter runs every program in Python).
SMALL = {
    "causal_gqa_6_2": dict(batch=1, n_queries=21, n_keys=21, top_k=0),
    "bidirectional_gqa_9_3": dict(n_queries=17, n_keys=35),
    "decode_one_row": dict(heads=3, kv_heads=1, n_keys=40, map_heads=(2,)),
    "chunked_prefill": dict(batch=1, heads=2, kv_heads=1),
    "sliding_window": dict(batch=1, heads=2, kv_heads=2, n_queries=40, n_keys=40, top_k=0),
    "sliding_window_decode": dict(heads=2, kv_heads=1),
    "left_padding_causal": dict(heads=2, kv_heads=1, n_queries=20, n_keys=20, top_k=0),
    "right_padding_bidirectional": dict(heads=2, n_queries=20, n_keys=20),
    "dense_mask": dict(heads=2, kv_heads=1, n_queries=18, n_keys=20, map_heads=(1,)),
    "one_region": dict(heads=1, n_queries=20, n_keys=20),
    "softcap": dict(heads=2, kv_heads=1, n_queries=20, n_keys=20, top_k=0),
    "bf16_inputs": dict(heads=3, kv_heads=1, n_queries=20, n_keys=20),
}
# The bitonic top-k is the slowest part to interpret: one tiny case with ties (masked zeros) and GQA.
SMALL["top_k_gqa_9_3"] = dict(
    base="causal_gqa_6_2", batch=1, heads=9, kv_heads=3, n_queries=18, n_keys=18, top_k=5, map_heads=None
)
ALL_CASES = [
    "causal_gqa_6_2",
    "bidirectional_gqa_9_3",
    "decode_one_row",
    "chunked_prefill",
    "sliding_window",
    "sliding_window_decode",
    "left_padding_causal",
    "right_padding_bidirectional",
    "dense_mask",
    "one_region",
    "softcap",
    "bf16_inputs",
]


@pytest.fixture
def tiny_cases(kernel_cases):
    out = {}
    for name, changes in SMALL.items():
        changes = dict(changes)
        out[name] = dataclasses.replace(kernel_cases[changes.pop("base", name)], **changes)
    return out


def test_triton_is_listed():
    assert "triton" in IMPLEMENTATIONS


@pytest.mark.parametrize("name", list(SMALL))
def test_equals_dense(name, tiny_cases, compare_to_dense):
    if not INTERPRETED:
        pytest.skip("covered at full size by the gpu tests")
    compare_to_dense(tiny_cases[name], "triton", block_size=(16, 16))


def test_given_log_normaliser_and_self_check(tiny_cases, stats_equal):
    if not INTERPRETED:
        pytest.skip("interpreter test")
    case = tiny_cases["left_padding_causal"]
    query, key, kw = case.build()
    want = attention_statistics(query, key, implementation="dense", **kw)
    from workbench.kernels.dense import dense_probabilities

    scores, _, visible = dense_probabilities(query, key, scaling=kw["scaling"], mask=kw["mask"])
    lse = scores.masked_fill(~visible, float("-inf")).logsumexp(-1)  # -inf on the rows that see nothing
    got = attention_statistics(
        query, key, implementation="triton", log_normaliser=lse, block_size=(16, 16), **kw
    )
    stats_equal(got, want)
    off = attention_statistics(
        query, key, implementation="triton", log_normaliser=lse + 0.1, block_size=(16, 16), **kw
    )
    seen = want.normaliser > 0
    torch.testing.assert_close(
        off.normaliser[seen], torch.full_like(off.normaliser[seen], torch.tensor(-0.1).exp().item())
    )


def test_top_k_limit_is_refused():
    query, key = torch.randn(1, 1, 16, 16), torch.randn(1, 1, 16, 16)
    with pytest.raises(ValueError, match="top_k"):
        attention_statistics(
            query,
            key,
            scaling=0.25,
            mask=MaskSpec(),
            key_regions=torch.zeros(16, dtype=torch.long),
            n_regions=1,
            top_k=65,
            implementation="triton",
        )


def test_deterministic(tiny_cases):
    if not INTERPRETED:
        pytest.skip("interpreter test")
    query, key, kw = tiny_cases["bidirectional_gqa_9_3"].build()
    a = attention_statistics(query, key, implementation="triton", block_size=(16, 16), **kw)
    b = attention_statistics(query, key, implementation="triton", block_size=(16, 16), **kw)
    assert torch.equal(a.key_mass, b.key_mass) and torch.equal(a.region_mass, b.region_mass)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("name", ALL_CASES)
def test_equals_dense_on_gpu(name, kernel_cases, compare_to_dense):
    compare_to_dense(kernel_cases[name], "triton", device="cuda")
    compare_to_dense(kernel_cases[name], "triton", device="cuda", block_size=(32, 32))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_auto_picks_triton_on_gpu(stats_equal):
    from workbench.kernels.api import resolve_implementation

    query, key = torch.randn(1, 9, 1000, 64, device="cuda"), torch.randn(1, 3, 1000, 64, device="cuda")
    assert resolve_implementation("auto", query) == "triton"
    kw = dict(
        scaling=0.125,
        mask=MaskSpec(causal=True),
        key_regions=torch.zeros(1000, dtype=torch.long, device="cuda"),
        n_regions=1,
    )
    got = attention_statistics(query, key, **kw)
    want = attention_statistics(
        query.cpu(), key.cpu(), implementation="dense", **{**kw, "key_regions": kw["key_regions"].cpu()}
    )
    stats_equal(got, want)
