"""Torch intra-op thread settings for a block of code."""

from __future__ import annotations

import contextlib


@contextlib.contextmanager
def torch_threads(count: int = 1):
    """Run the block with `count` torch intra-op threads, then restore the previous setting.

    Small matrices (tiny models, d_head x d_head LAPACK calls) gain nothing from threads and, on a busy
    machine, lose up to 100x to OpenMP barriers waiting for descheduled threads.

    >>> import torch
    >>> before = torch.get_num_threads()
    >>> with torch_threads(1):
    ...     torch.get_num_threads()
    1
    >>> torch.get_num_threads() == before
    True
    """
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def usable_cpus() -> int:
    """CPUs this process may run on (its affinity mask, not the machine's total)."""
    import os

    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def default_threads() -> tuple[int, str]:
    """(torch intra-op threads, why): the CPUs left idle by the rest of the machine right now.

    Every intra-op op ends in a barrier that waits for its slowest thread; a thread on a core that another
    process holds is descheduled, and the whole op waits for it (measured here: two threads on a busy 2-core
    machine ran generation 12x slower than one). So the default is the usable CPUs minus the 1-minute load
    average (which counts the runnable processes elsewhere: this one has not started its work yet), at least
    1. OMP_NUM_THREADS, when set, is the user's choice and wins.
    """
    import os

    cpus = usable_cpus()
    if os.environ.get("OMP_NUM_THREADS", "").isdigit() and int(os.environ["OMP_NUM_THREADS"]) > 0:
        return min(int(os.environ["OMP_NUM_THREADS"]), cpus), "OMP_NUM_THREADS"
    try:
        load = os.getloadavg()[0]
    except (AttributeError, OSError):
        return cpus, f"{cpus} usable CPUs (load unknown)"
    threads = max(1, min(cpus, cpus - round(load)))
    return threads, f"{cpus} usable CPUs, load average {load:.1f}"


def apply_threads(requested: int | None) -> tuple[int, str]:
    """Set torch's intra-op threads to `requested` (None: `default_threads()`); returns (threads, why)."""
    import torch

    threads, why = (requested, "--threads") if requested else default_threads()
    torch.set_num_threads(threads)
    return threads, why
