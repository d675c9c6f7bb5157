"""glibc's heap during the prompt forward of a long input: big temporaries mapped on their own, so freed ones go
back to the operating system instead of fragmenting the heap.

Why: glibc serves blocks under its mmap threshold from the heap, and that threshold grows on its own (up to 32 MiB)
each time a bigger mapped block is freed. In a long capture the per-layer temporaries (MiB each: MLP activations,
softmax statistics, the kernel's blocks) then come from the heap, between the recorder's long-lived buffers, and
freed ones cannot be returned: at n = 8,192 on SmolLM2 the peak RSS of a statistics capture was bimodal, 1.7 or
2.0-2.3 GiB against 1.8 GiB for the plain forward, flipped by changes that did not touch the forward
(benchmarks/RESULTS.md, "Whole-model capture memory"). A fixed threshold of 4 MiB maps the blocks that fragment
(the KV cache's, the projections') on their own and the peak follows the live tensors (1.66 GiB in every run);
the one-pass kernel's smaller block temporaries stay in the heap, where reuse is cheap. Measured thresholds:
128 KiB and 1 MiB gave the same peak but cost 10 % and 6 % more time (fresh zeroed pages on every call), 8 MiB was
bimodal again (1.68 / 1.91 GiB). Short inputs keep glibc's default, for the same cost reason.

glibc has no way back to its dynamic threshold once one is set; after the forward the threshold is set to 32 MiB,
the ceiling the dynamic threshold reaches in a process that has run a model (so later short inputs are served
from the heap as before). A threshold the user set (MALLOC_MMAP_THRESHOLD_) is left alone, as is any C library
other than glibc.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import functools
import os

LONG_INPUT_TOKENS = 2048  # positions x batch rows from which the prompt forward maps its temporaries
MAP_FROM_BYTES = 4 * 1024 * 1024  # blocks from here on are mapped on their own during a long prompt forward
AFTER_BYTES = 32 * 1024 * 1024  # glibc's DEFAULT_MMAP_THRESHOLD_MAX on 64-bit: where the dynamic threshold ends
_M_MMAP_THRESHOLD = -3  # mallopt parameter number (malloc.h)


@functools.cache
def _glibc():
    """The process's glibc (mallopt), or None on another C library or platform."""
    if os.name != "posix":
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.gnu_get_libc_version  # noqa: B018 - only glibc has it
        libc.mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    except (OSError, AttributeError):
        return None
    return libc


@contextlib.contextmanager
def long_input(n_tokens: int):
    """Map blocks of MAP_FROM_BYTES and more on their own while a forward over `n_tokens` positions (all batch rows
    together) runs, if that is long (LONG_INPUT_TOKENS) and the C library is glibc; else do nothing."""
    libc = _glibc()
    if n_tokens < LONG_INPUT_TOKENS or libc is None or "MALLOC_MMAP_THRESHOLD_" in os.environ:
        yield
        return
    libc.mallopt(_M_MMAP_THRESHOLD, MAP_FROM_BYTES)
    try:
        yield
    finally:
        libc.mallopt(_M_MMAP_THRESHOLD, AFTER_BYTES)
