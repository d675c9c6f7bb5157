"""Shared comparison of two traces: same tokens, same tensors, statistics within 1e-5 (fp32)."""

from __future__ import annotations

import pytest

from tests.helpers import assert_close

STATISTICS = ("key_mass", "key_count", "region_mass", "region_count", "entropy", "normaliser", "maps")


def assert_same_trace(actual, expected, *, stats_tol: float = 1e-5, other_tol: float = 1e-4) -> None:
    """Statistics (and maps) within stats_tol; residual streams, head outputs and log-probs within other_tol."""
    assert [t.id for t in actual.tokens] == [t.id for t in expected.tokens]
    assert [t.region for t in actual.tokens] == [t.region for t in expected.tokens]
    assert actual.tensor_names() == expected.tensor_names()
    assert actual.dims == expected.dims
    for name in expected.tensor_names():
        want, got = expected.tensor(name), actual.tensor(name)
        if name.endswith(("key_count", "region_count", "map_heads", "head_out_positions")):
            assert got.equal(want), name
            continue
        tol = stats_tol if name.rsplit(".", 1)[-1] in STATISTICS else other_tol
        keep = want.isfinite()
        assert got.isfinite().equal(keep), name
        assert_close(got[keep], want[keep], atol=tol, rtol=tol, what=name)
    assert actual.checks["healthy"]


@pytest.fixture
def same_trace():
    return assert_same_trace


@pytest.fixture(autouse=True)
def _one_thread(one_torch_thread):
    yield
