"""Which keys each query may see, described without building the [query_pos, key_pos] mask up front."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch


@dataclass(frozen=True)
class MaskSpec:
    """Visibility of keys to queries.

    causal: key j is visible to query row i iff j <= i + query_offset.
    query_offset: absolute position of query row 0 (with a KV cache: n_keys - n_queries).
    sliding_window: if set, key j is also hidden when (i + query_offset) - j >= sliding_window.
    key_padding: [batch, key_pos] bool, True for real tokens (False keys are hidden from every query).
    dense: [batch, 1, query_pos, key_pos] bool, True = visible; when given it replaces all of the above
        (for arbitrary masks handed over by a model, e.g. LLaVA's or a prefix-LM's).
    """

    causal: bool = True
    query_offset: int = 0
    sliding_window: int | None = None
    key_padding: torch.Tensor | None = None
    dense: torch.Tensor | None = None
    # key_intervals' results for this instance; `dataclasses.replace` starts a fresh one (init=False)
    _intervals: dict = field(default_factory=dict, init=False, repr=False, compare=False)

    def block(self, q_start: int, q_end: int, k_start: int, k_end: int, device=None) -> torch.Tensor:
        """Visibility of keys [k_start, k_end) to query rows [q_start, q_end): [batch|1, 1, q, k] bool."""
        if self.dense is not None:
            if self.dense.shape[1] != 1:
                raise ValueError("MaskSpec.dense must have a head axis of size 1 (one mask for all heads)")
            return self.dense[:, :, q_start:q_end, k_start:k_end].to(torch.bool)
        device = device if device is not None else (self.key_padding.device if self.key_padding is not None else None)
        query_abs = torch.arange(q_start, q_end, device=device)[:, None] + self.query_offset
        key_abs = torch.arange(k_start, k_end, device=device)[None, :]
        visible = torch.ones(q_end - q_start, k_end - k_start, dtype=torch.bool, device=device)
        if self.causal:
            visible &= key_abs <= query_abs
        if self.sliding_window is not None:
            visible &= (query_abs - key_abs) < self.sliding_window
        visible = visible[None, None]
        if self.key_padding is not None:
            visible = visible & self.key_padding[:, None, None, k_start:k_end].to(torch.bool)
        return visible
    def key_intervals(self, n_queries: int, n_keys: int, *, block_q: int = 1024):
        """Per query row the keys it sees as one interval [start, end), or None when some row's visible keys
        are not contiguous (holes from key padding or an irregular dense mask).

        Returns (start, end), each [batch|1, query_pos] int64; rows that see no key get start = end = 0.
        Causal, sliding-window, chunked-local and prefix-LM masks are all one interval per row, so a kernel
        that takes these bounds covers them without the [query_pos, key_pos] mask. A dense mask is read in
        blocks of `block_q` rows (no copy of the whole mask), once per instance and shape.
        """
        if (n_queries, n_keys) not in self._intervals:
            self._intervals[n_queries, n_keys] = self._find_intervals(n_queries, n_keys, block_q)
        return self._intervals[n_queries, n_keys]

    def _find_intervals(self, n_queries: int, n_keys: int, block_q: int):
        if self.dense is None:
            if self.key_padding is not None:
                return None
            rows = torch.arange(n_queries) + self.query_offset
            end = torch.clamp(rows + 1, 0, n_keys) if self.causal else torch.full_like(rows, n_keys)
            start = (torch.clamp(rows - self.sliding_window + 1, 0, n_keys) if self.sliding_window is not None
                     else torch.zeros_like(rows))
            empty = end <= start
            return start.masked_fill(empty, 0)[None], end.masked_fill(empty, 0)[None]
        visible = self.dense[:, 0].to(torch.bool)  # [batch|1, query_pos, key_pos]
        batch = visible.shape[0]
        start = torch.zeros(batch, n_queries, dtype=torch.long, device=visible.device)
        end = torch.zeros_like(start)
        for q0 in range(0, n_queries, block_q):
            block = visible[:, q0:q0 + block_q].view(torch.uint8)
            count = block.sum(-1)
            first = block.argmax(-1)  # the first visible key (argmax returns the first maximum)
            last = n_keys - block.flip(-1).argmax(-1)  # one past the last visible key
            seen = count > 0
            if not torch.equal(count[seen], (last - first)[seen]):
                return None
            start[:, q0:q0 + block_q] = first.masked_fill(~seen, 0)
            end[:, q0:q0 + block_q] = last.masked_fill(~seen, 0)
        return start, end
