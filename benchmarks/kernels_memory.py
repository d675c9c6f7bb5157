"""Time and peak extra memory of the attention-statistics implementations on one SmolLM2-shaped layer.

One causal layer (9 query heads, 3 kv heads, d_head 64, 3 key regions), measured side by side in one run:
the SDPA forward that yields the row log-sum-exp (the floor), the dense reference (only where its maps fit
the --dense-limit-gb budget; otherwise its estimated memory is printed), the block-wise torch
implementation with the forward's lse and without it, and the Triton kernels when CUDA is present.
Time is a ratio to the floor (best of --repeat). Memory, two ways: the peak bytes of live tensors the call
creates (a dispatch-mode probe: exact, allocator-independent) and the peak extra resident memory (CPU:
VmHWM after resetting it through /proc/self/clear_refs, which misses memory the allocator reuses; CUDA:
max_memory_allocated).

    python benchmarks/kernels_memory.py [--n 1024 4096 16384] [--threads 1] [--repeat 3]
"""

from __future__ import annotations

import argparse
import functools
import os
import platform
import time
import weakref

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

from workbench.kernels import IMPLEMENTATIONS, MaskSpec, attention_statistics, sdpa_with_log_normaliser
from workbench.peak_rss import reset_peak, status_kib

HEADS, KV_HEADS, D_HEAD = 9, 3, 64


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    gpu = f", GPU {torch.cuda.get_device_name()}" if torch.cuda.is_available() else ", no GPU"
    return (
        f"{cpu}, {os.cpu_count()} logical cores, torch {torch.__version__} with {torch.get_num_threads()} "
        f"thread(s){gpu}"
    )


class PeakTensorBytes(TorchDispatchMode):
    """Peak bytes of live tensors created by aten ops while active: allocator-independent, unlike RSS."""

    def __init__(self):
        super().__init__()
        self.live = self.peak = 0
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
                    self.peak = max(self.peak, self.live)
                    weakref.finalize(t, self._free, ptr, nbytes)
        return out


def measure(fn, device: str, repeat: int) -> tuple[float, float, float]:
    """(best seconds, peak extra resident bytes, peak bytes of new tensors) of fn()."""
    with PeakTensorBytes() as probe:
        fn()
    tensors = probe.peak
    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        fn()
        torch.cuda.synchronize()
        extra = torch.cuda.max_memory_allocated() - base
    else:
        reset_peak()
        base = status_kib("VmRSS")
        fn()
        extra = (status_kib("VmHWM") - base) * 1024
    best = float("inf")
    for _ in range(repeat):
        if device == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        fn()
        if device == "cuda":
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - start)
    return best, extra, tensors


def run(
    n: int, device: str, dtype: torch.dtype, repeat: int, dense_limit: float
) -> list[tuple[str, str, str, str]]:
    torch.manual_seed(0)
    query = torch.randn(1, HEADS, n, D_HEAD, device=device, dtype=dtype)
    key = torch.randn(1, KV_HEADS, n, D_HEAD, device=device, dtype=dtype)
    value = torch.randn(1, KV_HEADS, n, D_HEAD, device=device, dtype=dtype)
    regions = torch.zeros(n, dtype=torch.long, device=device)
    regions[: n // 8] = 1
    regions[n // 2 :] = 2
    scaling = D_HEAD**-0.5
    kw = dict(scaling=scaling, mask=MaskSpec(causal=True), key_regions=regions, n_regions=3)
    map_bytes = HEADS * n * n * 4
    forward = functools.partial(sdpa_with_log_normaliser, query, key, value, scaling=scaling, is_causal=True)
    floor_s, floor_mem, floor_tensors = measure(forward, device, repeat)
    _, lse = forward()

    def row(name, s, mem, tensors):
        return (
            name,
            f"{s / floor_s:.2f}",
            f"{tensors / 2**20:,.1f}",
            f"{max(mem, 0) / 2**20:,.0f}",
            f"{s:.3f}",
        )

    rows = [row("SDPA forward (floor)", floor_s, floor_mem, floor_tensors)]
    dense_estimate = 5.5 * map_bytes  # scores, probabilities, p log p, masks: measured 5.3 map sets at n=4096
    if dense_estimate <= dense_limit * 2**30:
        rows.append(
            row(
                "dense reference",
                *measure(
                    lambda: attention_statistics(query, key, implementation="dense", **kw), device, repeat
                ),
            )
        )
    else:
        rows.append(("dense reference", "not run", f"~{dense_estimate / 2**20:,.0f} (estimate)", "-", "-"))
    impls = ["torch"] + (["triton"] if device == "cuda" and "triton" in IMPLEMENTATIONS else [])
    for impl in impls:
        with_lse = functools.partial(
            attention_statistics, query, key, implementation=impl, log_normaliser=lse, **kw
        )
        rows.append(row(f"{impl}, lse from forward", *measure(with_lse, device, repeat)))
        own_lse = functools.partial(attention_statistics, query, key, implementation=impl, **kw)
        rows.append(row(f"{impl}, computes lse", *measure(own_lse, device, repeat)))
    from workbench.kernels import fused_cpu

    if fused_cpu.applies(query, key, value, kw["mask"]):  # output and statistics together: vs the floor alone
        one_pass = functools.partial(fused_cpu.fused_attention, query, key, value, **kw)
        rows.append(row("one-pass CPU kernel: output + statistics", *measure(one_pass, device, repeat)))
    return [(str(n), f"{map_bytes / 2**20:,.0f}", *row) for row in rows]


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, nargs="+", default=[1024, 4096, 16384])
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument(
        "--dense-limit-gb", type=float, default=4.0, help="skip dense above this estimated memory"
    )
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    dtype = getattr(torch, args.dtype)
    print(f"Machine: {machine()}; device {args.device}, {args.dtype}")
    print(f"Layer: {HEADS} heads, {KV_HEADS} kv heads, d_head {D_HEAD}, causal, 3 regions, batch 1\n")
    print(
        "| n | fp32 maps of the layer (MiB) | computation | time / floor | peak new tensors (MiB) "
        "| peak extra RSS (MiB) | seconds |"
    )
    print("|---:|---:|---|---:|---:|---:|---:|")
    for n in args.n:
        for row in run(n, args.device, dtype, args.repeat, args.dense_limit_gb):
            print("| " + " | ".join(row) + " |")


if __name__ == "__main__":
    main()
