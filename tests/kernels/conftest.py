"""Shared cases for the kernel tests: every implementation is compared with the dense reference.

A test that takes a `case` argument runs once per entry of CASES (a test may narrow the list with
`@pytest.mark.cases(*names)`); `compare_to_dense` checks one implementation's result field by field.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest
import torch

from workbench.kernels import AttentionStatistics, MaskSpec, attention_statistics

RTOL = 1e-5  # fp32, relative; ATOL covers entries that are ~0 (masked or negligible probabilities)
ATOL = 1e-6


@dataclass
class Case:
    """Random inputs of one attention call plus the keyword arguments of attention_statistics."""

    batch: int
    heads: int
    kv_heads: int
    n_queries: int
    n_keys: int
    d_head: int = 16
    mask: dict = field(default_factory=dict)
    n_regions: int = 3
    regions: str = "random"  # random | runs | alternating
    top_k: int = 0
    map_heads: tuple[int, ...] | None = None
    softcap: float | None = None
    dtype: torch.dtype = torch.float32
    padding: str | None = (
        None  # left | right: key padding (left padding makes fully masked rows under causal)
    )
    dense_mask: bool = False

    def build(self, seed: int = 0, device="cpu"):
        gen = torch.Generator().manual_seed(seed)
        query = (torch.randn(self.batch, self.heads, self.n_queries, self.d_head, generator=gen) * 1.5).to(
            self.dtype
        )
        key = (torch.randn(self.batch, self.kv_heads, self.n_keys, self.d_head, generator=gen) * 1.5).to(
            self.dtype
        )
        if self.regions == "random":
            regions = torch.randint(0, self.n_regions, (self.n_keys,), generator=gen)
        elif self.regions == "alternating":
            regions = torch.arange(self.n_keys) % self.n_regions
        else:  # a few contiguous runs, e.g. [system | image | user]
            regions = (torch.arange(self.n_keys) * self.n_regions // max(1, self.n_keys)).clamp_max(
                self.n_regions - 1
            )
        mask_kw = dict(self.mask)
        if self.padding:
            pad = torch.ones(self.batch, self.n_keys, dtype=torch.bool)
            if self.padding == "left":
                pad[0, : self.n_keys // 4] = False
            else:
                pad[-1, self.n_keys - self.n_keys // 3 :] = False
            mask_kw["key_padding"] = pad.to(device)
        if self.dense_mask:
            dense = torch.rand(self.batch, 1, self.n_queries, self.n_keys, generator=gen) > 0.4
            dense[0, 0, min(2, self.n_queries - 1)] = False  # a row that sees nothing
            mask_kw["dense"] = dense.to(device)
        kwargs = dict(
            scaling=self.d_head**-0.5,
            mask=MaskSpec(**mask_kw),
            key_regions=regions.to(device),
            n_regions=self.n_regions,
            top_k=self.top_k,
            map_heads=self.map_heads,
            softcap=self.softcap,
        )
        return query.to(device), key.to(device), kwargs


CASES: dict[str, Case] = {
    "causal_gqa_6_2": Case(2, 6, 2, 37, 37, top_k=5, map_heads=(0, 4)),
    "bidirectional_gqa_9_3": Case(1, 9, 3, 33, 45, mask=dict(causal=False), n_regions=4, regions="runs"),
    "decode_one_row": Case(1, 9, 3, 1, 70, mask=dict(query_offset=69), top_k=3, map_heads=(8,)),
    "chunked_prefill": Case(2, 4, 2, 5, 70, mask=dict(query_offset=65), regions="runs"),
    "sliding_window": Case(2, 4, 4, 50, 50, mask=dict(sliding_window=7), top_k=4, map_heads=(1,)),
    "sliding_window_decode": Case(
        1, 6, 2, 3, 61, mask=dict(query_offset=58, sliding_window=16), regions="alternating"
    ),
    "left_padding_causal": Case(2, 4, 2, 45, 45, padding="left", top_k=4),
    "right_padding_bidirectional": Case(
        2, 4, 1, 45, 45, mask=dict(causal=False), padding="right", regions="runs"
    ),
    "dense_mask": Case(2, 4, 2, 33, 45, dense_mask=True, top_k=4, map_heads=(3,)),
    "one_region": Case(1, 2, 1, 40, 40, n_regions=1, regions="runs"),
    "softcap": Case(1, 4, 2, 33, 33, softcap=5.0, top_k=2, mask=dict(sliding_window=20)),
    "bf16_inputs": Case(1, 6, 2, 29, 29, dtype=torch.bfloat16, regions="runs"),
}


def pytest_configure(config):
    config.addinivalue_line("markers", "cases(*names): run a `case` test only for these CASES entries")


def pytest_generate_tests(metafunc):
    if "case" in metafunc.fixturenames:
        marker = metafunc.definition.get_closest_marker("cases")
        names = list(marker.args) if marker else list(CASES)
        metafunc.parametrize("case", [CASES[n] for n in names], ids=names)


def _close(name: str, got: torch.Tensor, want: torch.Tensor, rtol: float = RTOL, atol: float = ATOL):
    assert got.shape == want.shape, f"{name}: shape {tuple(got.shape)} != {tuple(want.shape)}"
    assert torch.isfinite(got.float()).all(), f"{name}: non-finite values"
    if want.dtype == torch.long:
        assert torch.equal(got.cpu(), want.cpu()), f"{name}: integer counts differ"
    else:
        torch.testing.assert_close(got.cpu(), want.cpu(), rtol=rtol, atol=atol, msg=lambda m: f"{name}: {m}")


def compare_stats(
    got: AttentionStatistics, want: AttentionStatistics, dense_probs: torch.Tensor | None = None, *,
    rtol: float = RTOL, atol: float = ATOL,
):
    """Field-by-field equality; top-k by weights and by the dense probabilities at the returned keys.

    rtol, atol: RTOL and ATOL unless the scores are so large that fp32 rounding of s - lse alone moves p (and
    the entropy, in nats) by more (see test_extremely_sharp_attention_equals_dense)."""
    for name in ("key_mass", "key_count", "region_mass", "region_count", "entropy", "normaliser", "maps"):
        g, w = getattr(got, name), getattr(want, name)
        assert (g is None) == (w is None), f"{name}: presence differs"
        if g is not None:
            _close(name, g, w, rtol, atol)
    assert (got.top_index is None) == (want.top_index is None)
    if want.top_index is not None:
        _close("top_weight", got.top_weight, want.top_weight, rtol, atol)
        assert got.top_index.dtype == torch.long
        if dense_probs is not None:  # the returned keys really carry the returned weights
            _close("probs[top_index]", dense_probs.gather(-1, got.top_index.cpu()), got.top_weight, rtol, atol)


@pytest.fixture
def kernel_cases() -> dict[str, Case]:
    return CASES


@pytest.fixture
def stats_equal():
    """stats_equal(got, want, dense_probs=None): asserts equality field by field (see compare_stats)."""
    return compare_stats


@pytest.fixture
def compare_to_dense():
    """compare_to_dense(case, implementation, **extra) -> (got, want): runs both and asserts equality."""

    def run(case: Case, implementation: str, device="cpu", **extra):
        from workbench.kernels.dense import dense_probabilities

        query, key, kwargs = case.build(device=device)
        want = attention_statistics(
            query.cpu(),
            key.cpu(),
            implementation="dense",
            **{**kwargs, "mask": _to_cpu(kwargs["mask"]), "key_regions": kwargs["key_regions"].cpu()},
        )
        got = attention_statistics(query, key, implementation=implementation, **kwargs, **extra)
        _, probs, _ = dense_probabilities(
            query.cpu(),
            key.cpu(),
            scaling=kwargs["scaling"],
            mask=_to_cpu(kwargs["mask"]),
            softcap=kwargs["softcap"],
        )
        compare_stats(got, want, probs)
        return got, want

    return run


def _to_cpu(mask: MaskSpec) -> MaskSpec:
    return MaskSpec(
        causal=mask.causal,
        query_offset=mask.query_offset,
        sliding_window=mask.sliding_window,
        key_padding=None if mask.key_padding is None else mask.key_padding.cpu(),
        dense=None if mask.dense is None else mask.dense.cpu(),
    )
