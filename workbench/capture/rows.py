"""The recorders of a left-padded batch: one `Recorder` per row, each fed exactly what its input alone would give.

Several inputs run in one forward (`backends/hf_batch.py`) when they are left-padded to one length: row `b`
holds `pads[b]` padding positions, then its own tokens. The attention implementation hands every call of such a
forward to `RowRecorders.attend_rows`, which cuts each recorded row's queries, keys, values and mask down to the
row's own tokens (the padding is dropped, not masked inside the statistics) and passes that call to the row's
recorder through the usual path: the kernel choice, the one-pass kernel or SDPA plus two-pass statistics, the
counts, the region runs. A row's recorder therefore sees the very call shapes, positions and mask of a trace of
its input alone; only the numbers of the projections before attention come from a batched matmul, which moves
them at fp32 rounding level. Padded query rows get a zero output: no real row attends to them.

Positions here are padded positions (the batch's frame) unless named for a row; `pads[b]` converts.
"""

from __future__ import annotations

import torch

from workbench.capture.layout import ModelLayout
from workbench.capture.recorder import Recorder


class RowRecorders:
    """`recorders[b]` records row `b` of a left-padded batch (its padding: `pads[b]` positions); images of the
    vision tower are one per row, in row order."""

    splits_rows = True  # what the attention implementation looks for

    def __init__(self, layout: ModelLayout, recorders: list[Recorder], pads: list[int]):
        self.layout = layout
        self.recorders = recorders
        self.pads = pads
        self.step_start = 0  # padded position of the current forward's first query
        self.live: list[int] = list(range(len(recorders)))  # rows recorded in the current forward
        self._stacks: dict[int, str] = {}  # id(module) -> stack
        self._row_masks: dict[tuple, tuple] = {}  # this forward's row slices of a mask, kept so their ids hold

    def begin_step(self, start: int, length: int, live: list[int]) -> None:
        """A forward over padded positions [start, start + length) in which the rows `live` are recorded."""
        self.step_start, self.live = start, list(live)
        self._row_masks.clear()
        for row in self.live:
            first = max(start, self.pads[row])
            self.recorders[row].begin_step(first - self.pads[row], start + length - first)

    def install_hooks(self) -> list:
        """Hidden states entering each text layer, handed to each live row's recorder without its padding."""
        plan = self.recorders[0].plan
        if plan.decomposition:
            raise ValueError("a batched capture does not record decompositions; trace those inputs one at a time")
        if not plan.hidden_states:
            return []
        handles = []
        for index, layer_module in enumerate(self.layout.stacks["text"].layers):
            def hook(module, args, kwargs, index=index):
                hidden = args[0] if args else kwargs["hidden_states"]
                for row in self.live:
                    self.recorders[row].record_hidden(index, hidden[row, max(0, self.pads[row] - self.step_start):])
            handles.append(layer_module.register_forward_pre_hook(hook, with_kwargs=True))
        return handles

    def attend_rows(self, module, query, key, value, attention_mask, attend) -> torch.Tensor:
        """The output [batch, query_pos, head, d_head] of one batched call: attend(recorder, query, key, value,
        mask) per recorded row, over that row's own tokens; zeros for padded query rows and rows not recorded."""
        stack = self._stacks.get(id(module))
        if stack is None:
            stack = self._stacks[id(module)] = self.layout.locate(module)[0]
        n_queries, n_keys = query.shape[2], key.shape[2]
        output = query.new_zeros(query.shape[0], n_queries, query.shape[1], value.shape[-1])
        key_start = self.step_start + n_queries - n_keys  # a sliding-window cache holds only the latest keys
        for row in self.live if stack == "text" else range(query.shape[0]):
            if stack == "text":
                rows = slice(max(0, self.pads[row] - self.step_start), n_queries)
                keys = slice(max(0, self.pads[row] - key_start), n_keys)
            else:  # an image of the vision tower: no padding
                rows, keys = slice(0, n_queries), slice(0, n_keys)
            mask = self._row_mask(attention_mask, row, rows, keys)
            out = attend(self.recorders[row], query[row:row + 1, :, rows], key[row:row + 1, :, keys],
                         value[row:row + 1, :, keys], mask)
            output[row, rows] = out[0]
        return output

    def _row_mask(self, attention_mask, row: int, rows: slice, keys: slice):
        """Row `row`'s part of a [batch, 1, query_pos, key_pos] mask, the same tensor for every layer that gets this
        mask in this forward (the recorder finds a mask's visibility once per tensor)."""
        if attention_mask is None:
            return None
        place = (id(attention_mask), row, rows.start, keys.start, keys.stop)
        if place not in self._row_masks:
            batch_row = min(row, attention_mask.shape[0] - 1)
            self._row_masks[place] = (attention_mask,
                                      attention_mask[batch_row:batch_row + 1, :, rows, keys.start:keys.stop])
        return self._row_masks[place][1]
