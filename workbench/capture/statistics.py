"""One layer's attention statistics for the recorder, spread over CPU cores by query rows.

The block-wise CPU kernel issues many small tensor ops (a few per 64 x 256 block). With several intra-op
threads each of them ends in an OpenMP barrier, and when other processes share the cores a barrier waits
for a descheduled thread: measured on 2 shared cores, a SmolLM2 layer at n = 4096 took 8x the SDPA
forward with 2 threads and 1.1x with 1. So on CPU the query rows are cut into chunks of about equal
work, each chunk runs on its own Python thread with one intra-op thread (torch ops release the GIL),
and the results are put back together: rows are concatenated, column sums and counts are added in
chunk order (deterministic, whatever thread ran what). The statistics are the same as one call's up to
fp32 summation order of the column sums.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from itertools import pairwise

import torch

from workbench.kernels import AttentionStatistics, MaskSpec, attention_statistics

MIN_ROWS_PER_CHUNK = 256  # below this a chunk's per-call overhead outweighs what parallel rows gain
CHUNKS_PER_WORKER = 4  # more chunks than workers evens out what the causal triangle leaves uneven
ROW_ALIGN = 64  # chunk boundaries on the kernel's 1-thread query block


def layer_statistics(query: torch.Tensor, key: torch.Tensor, *, mask: MaskSpec, log_normaliser,
                     workers: int | None = None, **kwargs) -> AttentionStatistics:
    """`attention_statistics(query, key, mask=..., log_normaliser=..., **kwargs)`, row-parallel on CPU.

    workers: Python threads (default: torch.get_num_threads()); each runs its chunks on one intra-op thread.
    """
    workers = workers or torch.get_num_threads()
    n_queries = query.shape[2]
    chosen = kwargs.get("implementation")  # concrete: capture/kernel_choice.py decided
    if (workers < 2 or chosen != "torch" or query.device.type != "cpu" or log_normaliser is None
            or n_queries < 2 * MIN_ROWS_PER_CHUNK):
        return attention_statistics(query, key, mask=mask, log_normaliser=log_normaliser, **kwargs)
    bounds = _row_chunks(mask, n_queries, key.shape[2], workers * CHUNKS_PER_WORKER)

    def run(bound):
        start, end = bound
        torch.set_num_threads(1)  # this thread's OpenMP team; the caller's setting is restored below
        return attention_statistics(query[:, :, start:end], key, mask=rows_of(mask, start, end),
                                    log_normaliser=log_normaliser[:, :, start:end], **kwargs)

    previous = torch.get_num_threads()
    try:
        torch.set_num_threads(1)  # MKL's thread count is process-wide: one thread per worker while they run
        with ThreadPoolExecutor(max_workers=min(workers, len(bounds))) as pool:
            parts = list(pool.map(run, bounds))
    finally:
        torch.set_num_threads(previous)
    return _combine(parts)


def rows_of(mask: MaskSpec, start: int, end: int) -> MaskSpec:
    """The mask of query rows [start, end) as seen from a call that gets only those rows."""
    if mask.dense is not None:
        return replace(mask, dense=mask.dense[:, :, start:end])
    return replace(mask, query_offset=mask.query_offset + start)


def _row_chunks(mask: MaskSpec, n_queries: int, n_keys: int, chunks: int) -> list[tuple[int, int]]:
    """Boundaries of up to `chunks` row ranges with about equal numbers of visible (query, key) pairs."""
    rows = torch.arange(n_queries, dtype=torch.float64)
    if mask.dense is None and mask.causal:
        hi = torch.clamp(rows + mask.query_offset + 1, 0, n_keys)
        lo = torch.clamp(rows + mask.query_offset - mask.sliding_window + 1, 0, n_keys) \
            if mask.sliding_window is not None else torch.zeros_like(rows)
        work = (hi - lo).clamp(min=1)
    else:
        work = torch.ones_like(rows)
    cumulative = torch.cumsum(work, 0)
    chunks = max(1, min(chunks, n_queries // MIN_ROWS_PER_CHUNK))
    targets = cumulative[-1] * torch.arange(1, chunks, dtype=torch.float64) / chunks
    cuts = torch.searchsorted(cumulative, targets).tolist()
    edges = sorted({0, n_queries, *(min(n_queries, round(c / ROW_ALIGN) * ROW_ALIGN) for c in cuts)})
    return [(a, b) for a, b in pairwise(edges) if b > a]


def _combine(parts: list[AttentionStatistics]) -> AttentionStatistics:
    def rows(name: str, dim: int):
        values = [getattr(part, name) for part in parts]
        return None if values[0] is None else torch.cat(values, dim=dim)

    key_mass, key_count = parts[0].key_mass.clone(), parts[0].key_count.clone()
    for part in parts[1:]:
        key_mass += part.key_mass
        key_count += part.key_count
    return AttentionStatistics(
        key_mass=key_mass, key_count=key_count, region_mass=rows("region_mass", 2),
        region_count=rows("region_count", 1), entropy=rows("entropy", 2), normaliser=rows("normaliser", 2),
        top_index=rows("top_index", 2), top_weight=rows("top_weight", 2), maps=rows("maps", 2),
    )
