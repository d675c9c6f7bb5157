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
