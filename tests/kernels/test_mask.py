"""MaskSpec.key_intervals: one [start, end) run of keys per query row, read against the mask's own visibility."""

from __future__ import annotations

import pytest
import torch

from workbench.kernels import MaskSpec


def _runs_by_hand(visible: torch.Tensor):
    """(start, end) per row of a [query_pos, key_pos] bool mask by walking it, or None where a row has a hole."""
    starts, ends = [], []
    for row in visible.tolist():
        seen = [j for j, v in enumerate(row) if v]
        if seen and seen != list(range(seen[0], seen[-1] + 1)):
            return None
        starts.append(seen[0] if seen else 0)
        ends.append(seen[-1] + 1 if seen else 0)
    return torch.tensor(starts), torch.tensor(ends)


STRUCTURED = {
    "causal": MaskSpec(causal=True),
    "causal_offset": MaskSpec(causal=True, query_offset=9),
    "bidirectional": MaskSpec(causal=False),
    "sliding": MaskSpec(causal=True, sliding_window=4),
    "sliding_decode": MaskSpec(causal=True, query_offset=12, sliding_window=5),
    "window_past_every_key": MaskSpec(causal=True, query_offset=40, sliding_window=3),  # rows see nothing
}


@pytest.mark.parametrize("name", list(STRUCTURED))
def test_structured_masks_give_the_runs_their_block_shows(name):
    mask, n_queries, n_keys = STRUCTURED[name], 7, 16
    start, end = mask.key_intervals(n_queries, n_keys)
    want_start, want_end = _runs_by_hand(mask.block(0, n_queries, 0, n_keys)[0, 0])
    assert torch.equal(start[0], want_start) and torch.equal(end[0], want_end)


def test_dense_masks_read_in_blocks_and_per_batch():
    q = torch.arange(50)[:, None]
    k = torch.arange(50)[None, :]
    chunked = (k <= q) & (k // 8 == q // 8)
    windowed = (k <= q) & (q - k < 6)
    windowed[17] = False  # a row that sees nothing
    mask = MaskSpec(dense=torch.stack([chunked, windowed])[:, None])
    start, end = mask.key_intervals(50, 50, block_q=16)  # blocks of 16 rows: 4 blocks, the last partial
    for b, visible in enumerate((chunked, windowed)):
        want_start, want_end = _runs_by_hand(visible)
        assert torch.equal(start[b], want_start) and torch.equal(end[b], want_end)


def test_masks_with_holes_have_no_intervals():
    visible = torch.ones(10, 10, dtype=torch.bool).tril()
    visible[9, 3] = False
    assert _runs_by_hand(visible) is None
    assert MaskSpec(dense=visible[None, None]).key_intervals(10, 10, block_q=4) is None
    padding = torch.ones(1, 10, dtype=torch.bool)
    assert MaskSpec(causal=True, key_padding=padding).key_intervals(10, 10) is None
