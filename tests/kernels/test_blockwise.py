"""The block-wise torch implementation equals the dense reference and keeps its memory bound."""

from __future__ import annotations

import os
import weakref

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

from workbench.kernels import MaskSpec, attention_statistics
from workbench.kernels.blockwise import log_normaliser_blockwise, log_normaliser_sdpa
from workbench.peak_rss import reset_peak, status_kib


def test_equals_dense_small_blocks(case, compare_to_dense):
    # 16 x 32 blocks: every case spans several blocks, none of the sizes is a multiple of them.
    compare_to_dense(case, "torch", block_size=(16, 32))


@pytest.mark.cases("causal_gqa_6_2", "dense_mask", "left_padding_causal")
def test_equals_dense_default_blocks(case, compare_to_dense):
    compare_to_dense(case, "torch")


@pytest.mark.cases("causal_gqa_6_2", "sliding_window_decode", "left_padding_causal", "dense_mask", "softcap")
def test_online_log_normaliser_matches_logsumexp(case):
    from workbench.kernels.dense import dense_probabilities

    query, key, kw = case.build()
    scores, _, visible = dense_probabilities(
        query, key, scaling=kw["scaling"], mask=kw["mask"], softcap=kw["softcap"]
    )
    want = scores.masked_fill(~visible, float("-inf")).logsumexp(-1)
    want = torch.where(torch.isfinite(want), want, torch.zeros_like(want))
    got = log_normaliser_blockwise(
        query, key, scaling=kw["scaling"], mask=kw["mask"], softcap=kw["softcap"], block_size=(8, 16)
    )
    torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-6)


def test_sdpa_log_normaliser_is_used_for_plain_causal():
    query, key = torch.randn(1, 6, 40, 16), torch.randn(1, 2, 40, 16)
    lse = log_normaliser_sdpa(query, key, scaling=0.25, mask=MaskSpec(causal=True))
    scores = 0.25 * query @ key.repeat_interleave(3, 1).transpose(-1, -2)
    want = scores.masked_fill(~torch.ones(40, 40, dtype=torch.bool).tril(), float("-inf")).logsumexp(-1)
    torch.testing.assert_close(lse, want, rtol=1e-6, atol=1e-6)
    # Anything the fused kernel would get wrong (offset, padding) is left to the block-wise pass.
    assert log_normaliser_sdpa(query, key[:, :, :39], scaling=0.25, mask=MaskSpec(causal=True)) is None
    assert log_normaliser_sdpa(query, key, scaling=0.25, mask=MaskSpec(causal=True, sliding_window=4)) is None


def test_forward_log_normaliser_and_self_check():
    """lse from the CPU flash SDPA kernel (as the capture passes it) gives Z = 1; a wrong lse shows in Z."""
    query, key, value = torch.randn(1, 6, 50, 16), torch.randn(1, 2, 50, 16), torch.randn(1, 2, 50, 16)
    _, lse = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(
        query, key, value, 0.0, True, scale=0.25
    )
    kw = dict(
        scaling=0.25, mask=MaskSpec(causal=True), key_regions=torch.zeros(50, dtype=torch.long), n_regions=1
    )
    stats = attention_statistics(
        query, key, implementation="torch", log_normaliser=lse, block_size=(16, 16), **kw
    )
    torch.testing.assert_close(stats.normaliser, torch.ones(1, 6, 50), rtol=0, atol=2e-6)
    want = attention_statistics(query, key, implementation="dense", **kw)
    torch.testing.assert_close(stats.entropy, want.entropy, rtol=1e-5, atol=1e-6)
    off = attention_statistics(query, key, implementation="torch", log_normaliser=lse + 0.1, **kw)
    torch.testing.assert_close(off.normaliser, torch.full((1, 6, 50), torch.exp(torch.tensor(-0.1)).item()))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_equals_dense_on_gpu(case, compare_to_dense):
    compare_to_dense(case, "torch", device="cuda", block_size=(16, 32))


def test_fully_masked_rows_give_zero_and_no_nan():
    pad = torch.ones(1, 30, dtype=torch.bool)
    pad[0, :10] = False  # left padding: causal rows 0..9 see no key at all
    kw = dict(
        scaling=0.3,
        mask=MaskSpec(causal=True, key_padding=pad),
        key_regions=torch.zeros(30, dtype=torch.long),
        n_regions=2,
        top_k=3,
    )
    query, key = torch.randn(1, 2, 30, 8), torch.randn(1, 2, 30, 8)
    visible = MaskSpec(causal=True, key_padding=pad).block(0, 30, 0, 30)
    forward_lse = (0.3 * query @ key.transpose(-1, -2)).masked_fill(~visible, float("-inf")).logsumexp(-1)
    assert torch.isinf(forward_lse[..., :10]).all()
    for lse in (None, forward_lse):  # -inf for empty rows, as some kernels return it
        stats = attention_statistics(
            query, key, implementation="torch", log_normaliser=lse, block_size=(8, 8), **kw
        )
        for name in ("key_mass", "region_mass", "entropy", "normaliser", "top_weight"):
            assert torch.isfinite(getattr(stats, name)).all(), name
        assert (stats.normaliser[..., :10] == 0).all() and (stats.entropy[..., :10] == 0).all()
        assert (stats.region_mass[:, :, :10] == 0).all() and (stats.top_weight[:, :, :10] == 0).all()
        torch.testing.assert_close(stats.normaliser[..., 10:], torch.ones(1, 2, 20))
        assert (stats.key_count[0, :10] == 0).all() and (stats.key_mass[..., :10] == 0).all()


class _PeakTensorBytes(TorchDispatchMode):
    """Peak bytes of tensors created by aten ops while active (views and in-place results are not new)."""

    def __init__(self):
        super().__init__()
        self.live = self.peak = self.largest = 0
        self.owners: dict[int, int] = {}
        self.external: set[int] = set()  # storages that existed before (inputs): their views are not new

    def _free(self, ptr: int, nbytes: int):
        if self.owners.pop(ptr, None) is not None:
            self.live -= nbytes

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        for t in tree_leaves((args, kwargs)):
            if isinstance(t, torch.Tensor) and t.untyped_storage().data_ptr() not in self.owners:
                self.external.add(t.untyped_storage().data_ptr())
        out = func(*args, **(kwargs or {}))
        for t in tree_leaves(out):
            if isinstance(t, torch.Tensor):
                ptr, nbytes = t.untyped_storage().data_ptr(), t.untyped_storage().nbytes()
                if nbytes and ptr not in self.owners and ptr not in self.external:
                    self.owners[ptr] = nbytes
                    self.live += nbytes
                    self.peak, self.largest = max(self.peak, self.live), max(self.largest, nbytes)
                    weakref.finalize(t, self._free, ptr, nbytes)
        return out


def _peak_bytes(implementation: str, n: int, heads: int = 4, **extra) -> tuple[int, int]:
    torch.manual_seed(0)
    query, key, value = (
        torch.randn(1, heads, n, 32),
        torch.randn(1, heads // 2, n, 32),
        torch.randn(1, heads // 2, n, 32),
    )
    _, lse = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(
        query, key, value, 0.0, True, scale=0.2
    )
    regions = (torch.arange(n) >= n // 2).long()
    with _PeakTensorBytes() as probe:
        attention_statistics(
            query,
            key,
            scaling=0.2,
            mask=MaskSpec(causal=True),
            key_regions=regions,
            n_regions=2,
            implementation=implementation,
            log_normaliser=lse,
            **extra,
        )
    return probe.peak, probe.largest


def test_working_memory_is_far_below_the_map():
    n, heads, block = 1024, 4, (64, 256)
    map_bytes = heads * n * n * 4
    dense_peak, _ = _peak_bytes("dense", n, heads)
    assert dense_peak >= map_bytes  # the probe sees the dense reference's maps: this test can fail
    peak, largest = _peak_bytes("torch", n, heads, block_size=block)
    outputs = heads * n * (2 + 2 + 1) * 4 + 2 * n * 8 * 3  # region_mass (R=2), entropy, Z, key_mass; counts
    working_set = 3 * heads * block[0] * block[1] * 4
    assert largest <= max(working_set, outputs), (largest, working_set)
    assert peak <= 2 * (working_set + outputs), (peak, working_set, outputs)
    assert peak < map_bytes / 10


@pytest.mark.skipif(not os.path.exists("/proc/self/clear_refs"), reason="needs Linux /proc peak-RSS reset")
def test_peak_resident_memory_is_far_below_the_map():
    """Real resident memory (VmHWM) of the process: fresh maps over 32 MB are always new mmapped pages."""
    n, heads = 2048, 4
    map_bytes = heads * n * n * 4  # 64 MiB

    def peak_extra(implementation):
        torch.manual_seed(0)
        query, key = torch.randn(1, heads, n, 32), torch.randn(1, heads // 2, n, 32)
        kw = dict(
            scaling=0.2, mask=MaskSpec(causal=True), key_regions=torch.zeros(n, dtype=torch.long), n_regions=1
        )
        try:
            reset_peak()
        except OSError:
            pytest.skip("cannot reset peak RSS here")
        before = status_kib("VmRSS")
        attention_statistics(query, key, implementation=implementation, **kw)
        return (status_kib("VmHWM") - before) * 1024

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        dense = peak_extra("dense")
        blockwise = peak_extra("torch")
    finally:
        torch.set_num_threads(threads)
    assert dense >= map_bytes, dense  # control: the measurement sees a materialised map
    assert blockwise < map_bytes / 4, (blockwise, map_bytes)


def test_extremely_sharp_attention_equals_dense():
    """Log-probabilities far below fp32's normal range (clamped before exp for speed) change nothing visible."""
    from tests.kernels.conftest import Case, compare_stats
    from workbench.kernels.dense import dense_probabilities

    case = Case(batch=1, heads=4, kv_heads=2, n_queries=40, n_keys=40, mask={"causal": True}, top_k=3,
                map_heads=(0, 3))
    query, key, kwargs = case.build(seed=3)
    query = query * 40.0  # scores spread over thousands: most p underflow
    _, probs, _ = dense_probabilities(query, key, scaling=kwargs["scaling"], mask=kwargs["mask"], softcap=None)
    log_probs = torch.log(probs[probs > 0])
    assert (log_probs < -87.4).float().mean() > 0.2  # the case really reaches the subnormal range
    dense = attention_statistics(query, key, implementation="dense", **kwargs)
    blockwise = attention_statistics(query, key, implementation="torch", block_size=(8, 16), **kwargs)
    # Scores of several hundred: fp32 rounding of s - lse alone moves each p by up to |s| * 2^-24 relative, in
    # either implementation (by how much depends on the CPU's matmul order: AVX2 and AVX-512 differ), and the
    # entropy by as many nats. Both are held to that bound against a float64 softmax, and to each other within
    # twice it.
    scores = query.double() @ key.double().repeat_interleave(2, 1).transpose(-1, -2) * kwargs["scaling"]
    scores = scores.masked_fill(~torch.ones(40, 40, dtype=torch.bool).tril(), float("-inf"))
    fp32_rounding = 2.0 * float(scores[scores.isfinite()].abs().max()) * 2.0 ** -24
    truth = torch.softmax(scores, -1).sum(2)
    for name, stats in (("dense", dense), ("torch", blockwise)):
        torch.testing.assert_close(stats.key_mass.double(), truth, rtol=fp32_rounding, atol=1e-6, msg=name)
    compare_stats(blockwise, dense, probs, rtol=max(2 * fp32_rounding, 1e-5), atol=max(2 * fp32_rounding, 1e-6))
