"""One-pass CPU attention: the layer output and its statistics from the same scores (kernels/fused_cpu.cpp).

The two-pass path (`sdpa_with_log_normaliser` + `attention_statistics`) keeps SDPA's bit-identical
output but computes every score twice, which costs about 2x the plain forward at long contexts. This
kernel computes the scores of a block of query rows once, takes the exact softmax of full rows from them,
reduces the statistics and multiplies by V: measured 1.0-1.1x the fused SDPA forward of a SmolLM2 layer
at n = 2,048-32,768 on 2 cores (benchmarks/attention_stats.py has the whole-model numbers). Its output
equals SDPA's up to fp32 rounding (summation order), not bit for bit.

A KV-cache decode step has one query row over the whole cache: there the kernel takes its decode path
(`fused_decode_statistics`), which cuts the work by key head instead of by 128-row query blocks, computes
the scores of every query head sharing a key head with one GEMM, and runs small calls on the calling thread.

Scope: fp32 CPU tensors, a mask under which every query row sees one contiguous interval of keys
(`MaskSpec.key_intervals`: none, causal with `query_offset`, sliding window, chunked-local, prefix-LM, as a
MaskSpec or as a dense mask of that shape), no key padding with holes, no top-k, no maps, no soft-capping.
`unsupported()` says why an input does not qualify (None: it does); callers fall back to the two-pass path.

The C++ source is compiled once per machine with torch's extension builder (g++, `-march=native`) into
`$WORKBENCH_CACHE/extensions/` (default ~/.cache/workbench) on first use or by `python -m
workbench.kernels.fused_cpu`; `make setup` does the latter. Where it cannot be built (no compiler) a
one-line warning says so and capture uses the two-pass path. WORKBENCH_FUSED_CPU=0 turns it off.

Memory beyond inputs and outputs: one [block_q, key_pos] fp32 score block per thread (128 x 32,768 x 4 B
= 16 MiB at 32k) and [batch, head, 4, key_pos] column-sum partials; the decode path one [group, key_pos]
score block per thread and no partials.
"""

from __future__ import annotations

import hashlib
import os
import platform
import subprocess
import sys
import threading
import warnings
from functools import lru_cache
from pathlib import Path
from typing import Literal

import torch
from workbench.kernels.counts import interval_counts
from workbench.kernels.mask import MaskSpec
from workbench.kernels.result import AttentionStatistics

SOURCE = Path(__file__).with_name("fused_cpu.cpp")
DEFAULT_BLOCK_Q = 128  # measured on a SmolLM2 layer, 2 threads: 0.99x SDPA at 8k (64: 1.16x, 256: 1.06x)
DECODE_MAX_ROWS = 8  # up to this many query rows take the decode path (one KV-cache step, a short chunk)
COMPILE_FLAGS = ("-O3", "-march=native", "-fopenmp", "-ffp-contract=fast", "-fno-math-errno")


def _cpu_signature() -> str:
    """What -march=native depends on, so a cache shared between machines never runs foreign code."""
    try:
        flags = next(line for line in Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("flags"))
    except (OSError, StopIteration):
        flags = ""
    return f"{platform.machine()} {flags}"


def _cache_root() -> Path:
    """$WORKBENCH_CACHE, else ~/.cache/workbench: the folder the converted weights use too. Looked up here
    rather than imported, because kernels depend on torch only."""
    return Path(os.environ.get("WORKBENCH_CACHE", Path.home() / ".cache" / "workbench")).expanduser()


def build_directory() -> Path:
    digest = hashlib.sha256()
    for part in (SOURCE.read_bytes(), torch.__version__.encode(), " ".join(COMPILE_FLAGS).encode(),
                 _cpu_signature().encode(), sys.version.encode()):
        digest.update(part)
    return _cache_root() / "extensions" / f"fused_cpu-{digest.hexdigest()[:16]}"


def _put_ninja_on_path() -> None:
    """torch's builder runs `ninja` from PATH; the pip package's binary is there only in an activated venv."""
    import shutil

    if shutil.which("ninja") is None:
        try:
            import ninja
        except ImportError:
            return
        os.environ["PATH"] = ninja.BIN_DIR + os.pathsep + os.environ.get("PATH", "")


_LOAD_LOCK = threading.Lock()  # capture may start on several threads (sweeps, the app): one build, one load


@lru_cache(maxsize=1)
def load() -> bool:
    """Build (first time on this machine) and load the kernel; False, with one warning, where that fails."""
    if os.environ.get("WORKBENCH_FUSED_CPU", "1") == "0":
        return False
    with _LOAD_LOCK:
        return _build_and_load()


def _build_and_load() -> bool:
    if hasattr(torch.ops.workbench, "fused_attention_statistics"):
        return True
    directory = build_directory()
    fresh = not any(directory.glob("*.so"))
    try:
        from torch.utils import cpp_extension

        _put_ninja_on_path()
        directory.mkdir(parents=True, exist_ok=True)
        if fresh:
            print("workbench: building the fused CPU attention kernel once (~10 s) ...", file=sys.stderr, flush=True)
        cpp_extension.load(
            "workbench_fused_cpu", [str(SOURCE)], extra_cflags=list(COMPILE_FLAGS), build_directory=str(directory),
            is_python_module=False, verbose=False,
        )
        return hasattr(torch.ops.workbench, "fused_attention_statistics")
    except (RuntimeError, OSError, ImportError, subprocess.SubprocessError) as error:  # no compiler / ninja / BLAS
        first_line = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        warnings.warn(
            f"the fused CPU attention kernel could not be built ({first_line[:200]}); capture uses the slower "
            "two-pass statistics. Install g++ (and `pip install ninja`) to enable it.",
            RuntimeWarning, stacklevel=3,
        )
        return False


MASK_OUT_OF_SCOPE = "a mask under which some query row sees keys that are not one contiguous run"


def _scope(query, key, value, mask: MaskSpec):
    """(None, key intervals) for inputs the kernel runs, else (why not, None). The intervals are computed once:
    for a dense mask that is a pass over [query_pos, key_pos]."""
    # plain attribute tests: this runs for every layer of every decode step
    if not (query.dtype == key.dtype == value.dtype == torch.float32 and query.is_cpu and key.is_cpu
            and value.is_cpu and query.ndim == key.ndim == value.ndim == 4):
        return "inputs that are not fp32 CPU tensors", None
    if query.shape[1] % key.shape[1] or key.shape[2] == 0:
        return "no keys, or query heads that do not share key heads evenly", None
    intervals = mask.key_intervals(query.shape[2], key.shape[2])
    if intervals is None:
        return MASK_OUT_OF_SCOPE, None
    if not load():
        return "the one-pass kernel is not built here", None
    return None, intervals


def unsupported(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, mask: MaskSpec) -> str | None:
    """Why these inputs are outside the kernel's scope (see the module docstring), or None when it runs them."""
    return _scope(query, key, value, mask)[0]


def applies(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, mask: MaskSpec) -> bool:
    """Whether these inputs are in the kernel's scope (see the module docstring) and the kernel loads."""
    return unsupported(query, key, value, mask) is None


def region_runs_tensor(key_regions: torch.Tensor) -> torch.Tensor:
    """[n_runs, 3] int64 (start, end, region) runs of equal region over the keys: what the kernel reads the key
    regions as. Depends on the regions alone, so a caller with many layers over the same keys computes it once.
    Tensor ops throughout (no Python list of runs): this runs once per forward, so per decode step."""
    regions = key_regions.detach().to("cpu", torch.long)
    values, lengths = torch.unique_consecutive(regions, return_counts=True)
    ends = torch.cumsum(lengths, 0)
    return torch.stack([ends - lengths, ends, values], 1)


def fused_attention(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    *,
    scaling: float,
    mask: MaskSpec,
    key_regions: torch.Tensor,
    n_regions: int,
    block_q: int = DEFAULT_BLOCK_Q,
    runs: torch.Tensor | None = None,
    counts: tuple[torch.Tensor, torch.Tensor] | None = None,
    path: Literal["auto", "blocked", "decode"] = "auto",
) -> tuple[torch.Tensor, torch.Tensor, AttentionStatistics]:
    """softmax(scaling * q k^T + mask) v with its row log-sum-exp and statistics, all from one pass.

    query: [batch, head, query_pos, d_head]; key, value: [batch, kv_head, key_pos, d_head] (GQA: consecutive
    query heads share a kv head); mask: see `applies`. Returns output [batch, query_pos,
    head, d_value] (the layout attention modules hand to their output projection), lse [batch, head,
    query_pos] and the statistics (top-k and maps None). Rows that see no key get zeros. The mask is read as
    one key interval per row (`MaskSpec.key_intervals`), shared by all heads.

    runs: `region_runs_tensor(key_regions)` if the caller has it already. counts: (key_count [batch, key_pos],
    region_count [batch, query_pos, region]) if the caller has them already (they depend on the mask and the
    regions only: `counts.interval_counts`); otherwise both are computed here.
    path: "blocked" (blocks of `block_q` query rows per head), "decode" (per row, all heads of a kv head at once:
    for a few rows over a long KV cache) or "auto" (decode for up to DECODE_MAX_ROWS rows).

    >>> import torch
    >>> from workbench.kernels import MaskSpec
    >>> q, k, v = torch.randn(1, 4, 6, 8), torch.randn(1, 2, 6, 8), torch.randn(1, 2, 6, 8)
    >>> mask = MaskSpec(causal=True)
    >>> if applies(q, k, v, mask):
    ...     out, lse, stats = fused_attention(q, k, v, scaling=8 ** -0.5, mask=mask,
    ...                                       key_regions=torch.zeros(6, dtype=torch.long), n_regions=1)
    ...     sdpa = torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)
    ...     assert torch.allclose(out.transpose(1, 2), sdpa, atol=1e-5)
    ...     assert torch.allclose(stats.normaliser, torch.ones(1, 4, 6), atol=1e-5)
    """
    reason, intervals = _scope(query, key, value, mask)
    if reason is not None:
        raise ValueError(f"fused_attention needs fp32 CPU tensors, one key interval per query row and the built "
                         f"kernel; got {reason}")
    batch, n_queries, n_keys = query.shape[0], query.shape[2], key.shape[2]
    key_start, key_end = intervals
    runs = runs if runs is not None else region_runs_tensor(key_regions)
    if path == "decode" or (path == "auto" and n_queries <= DECODE_MAX_ROWS):
        results = torch.ops.workbench.fused_decode_statistics(
            query, key, value, float(scaling), key_start, key_end, runs, int(n_regions))
    else:
        results = torch.ops.workbench.fused_attention_statistics(
            query, key, value, float(scaling), key_start, key_end, runs, int(n_regions), int(block_q))
    output, lse, key_mass, region_mass, entropy, normaliser = results
    if counts is None:
        counts = interval_counts(key_start, key_end, batch=batch, n_keys=n_keys, key_regions=key_regions,
                                 n_regions=n_regions, device=query.device)
    key_count, region_count = counts
    stats = AttentionStatistics(key_mass=key_mass, key_count=key_count, region_mass=region_mass,
                                region_count=region_count, entropy=entropy, normaliser=normaliser)
    return output, lse, stats


if __name__ == "__main__":  # `python -m workbench.kernels.fused_cpu`: build now (make setup), say the outcome
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        built = load()
    print(f"fused CPU attention kernel: {'ready in ' + str(build_directory()) if built else 'not available'}")
    for warning in caught:
        print(f"warning: {warning.message}")
