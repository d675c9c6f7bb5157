"""Windows of a [query_pos, key_pos] map for display: full resolution when small, max-pooled when large.

The browser never receives more than about max_cells x max_cells values, whatever the sequence length:
the overview of a 4,096-token map is max-pooled (a sink column or a diagonal stays visible, unlike with
averaging or striding), and a zoomed window is served at full resolution once it is small enough.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

DEFAULT_MAX_CELLS = 400


@dataclass(frozen=True)
class Window:
    """A displayed piece of a map: values[r, c] covers queries [q0 + r*q_step, ...) and keys [k0 + c*k_step, ...)."""

    values: np.ndarray  # [rows, cols] float32
    q0: int
    q1: int
    k0: int
    k1: int
    q_step: int
    k_step: int

    @property
    def pooled(self) -> bool:
        return self.q_step > 1 or self.k_step > 1

    def q_centers(self) -> np.ndarray:
        return _centers(self.q0, self.q1, self.q_step)

    def k_centers(self) -> np.ndarray:
        return _centers(self.k0, self.k1, self.k_step)


def _centers(start: int, end: int, step: int) -> np.ndarray:
    lows = np.arange(start, end, step)
    highs = np.minimum(lows + step, end) - 1
    return (lows + highs) / 2.0


def clamp_range(span, n: int) -> tuple[int, int]:
    """[start, end) integer range from a float (low, high) axis range (in position units), clamped to [0, n)."""
    if span is None:
        return 0, n
    low, high = sorted((float(span[0]), float(span[1])))
    if not (math.isfinite(low) and math.isfinite(high)):
        return 0, n
    # cells are centred on integers: keep every cell that overlaps the range by more than a boundary point
    start = max(0, min(n - 1, math.floor(low + 0.5)))
    end = max(start + 1, min(n, math.ceil(high - 0.5) + 1))
    return start, end


def window(full: torch.Tensor, q_range=None, k_range=None, *, max_cells: int = DEFAULT_MAX_CELLS,
           signed: bool = False) -> Window:
    """Slice [q_range) x [k_range) out of `full` [query_pos, key_pos] and max-pool it to <= max_cells per side.
    signed=True (a difference of maps): each block keeps its value of largest magnitude, sign included, so a
    change of either sign stays visible at any length (max-pooling would hide decreases)."""
    n_q, n_k = full.shape
    q0, q1 = clamp_range(q_range, n_q)
    k0, k1 = clamp_range(k_range, n_k)
    piece = full[q0:q1, k0:k1].float()
    q_step = max(1, math.ceil((q1 - q0) / max_cells))
    k_step = max(1, math.ceil((k1 - k0) / max_cells))
    if q_step > 1 or k_step > 1:
        def pool(values):
            return torch.nn.functional.max_pool2d(values[None, None], kernel_size=(q_step, k_step),
                                                  stride=(q_step, k_step), ceil_mode=True)[0, 0]
        high = pool(piece)
        if signed:
            low = -pool(-piece)
            high = torch.where(low.abs() > high.abs(), low, high)
        piece = high
    return Window(piece.numpy().astype(np.float32, copy=False), q0, q1, k0, k1, q_step, k_step)


def pool_columns(rows: np.ndarray, max_cells: int = 1024) -> tuple[np.ndarray, int]:
    """Max-pool the last axis of [..., key_pos] to <= max_cells columns; returns (pooled, step)."""
    n = rows.shape[-1]
    step = max(1, math.ceil(n / max_cells))
    if step == 1:
        return rows, 1
    pad = (-n) % step
    padded = np.concatenate([rows, np.zeros(rows.shape[:-1] + (pad,), rows.dtype)], axis=-1) if pad else rows
    return padded.reshape(rows.shape[:-1] + (-1, step)).max(-1), step
