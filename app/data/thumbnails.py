"""Thumbnails of attention maps: every head of a layer (or of every layer) pooled to a few dozen pixels a side.

The small-multiples views (BertViz's model view, CircuitsVis's `attention_patterns`) draw every head at once;
shipping 270 full maps of thousands of tokens to a browser is out of the question, so the server pools each
[query_pos, key_pos] map to at most `side` x `side` blocks and keeps only those. Max-pooling (the default, as
in the Head view's overview) keeps a one-token sink column or a diagonal visible at any length; mean-pooling
shows how much mass a block holds.

    >>> pooled = pool_map(head_map, 64)           # [<=64, <=64]; block (r, c) = max over its positions
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import numpy as np

THUMBNAIL_SIDE = 64


def pool_step(n: int, side: int) -> int:
    """Positions per thumbnail pixel for n positions shown in at most `side` pixels."""
    return max(1, math.ceil(n / side))


def pool_map(values, side: int = THUMBNAIL_SIDE, *, mode: Literal["max", "mean"] = "max") -> np.ndarray:
    """[query_pos, key_pos] -> [ceil(n_q / s), ceil(n_k / s)] float32 with s = ceil(n / side) positions per block
    on both axes (the same s, so a square map stays square); the last block of each axis may be partial and is
    pooled over its real positions only."""
    values = np.asarray(values, dtype=np.float32)
    n_q, n_k = values.shape
    step = pool_step(max(n_q, n_k), side)
    if step == 1:
        return values.copy()
    rows, cols = math.ceil(n_q / step), math.ceil(n_k / step)
    padded = values
    if (rows * step, cols * step) != (n_q, n_k):  # partial last blocks: pad with what cannot win or add
        padded = np.full((rows * step, cols * step), -np.inf if mode == "max" else 0.0, dtype=np.float32)
        padded[:n_q, :n_k] = values
    # rows of a block first (element-wise over whole contiguous rows, vectorised), then the columns: about 3x faster
    # than reducing both block axes of a [rows, step, cols, step] view at once
    reduce = np.max if mode == "max" else np.sum
    pooled = reduce(reduce(padded.reshape(rows, step, cols * step), axis=1).reshape(rows, cols, step), axis=2)
    if mode == "max":
        return pooled
    counts = np.outer(np.minimum(step, n_q - np.arange(rows) * step), np.minimum(step, n_k - np.arange(cols) * step))
    return (pooled / counts).astype(np.float32)


@dataclass(frozen=True)
class LayerThumbnails:
    """Pooled maps of every head of one layer: pooled[head] covers positions in blocks of `step`."""

    layer: int
    pooled: np.ndarray  # [head, rows, cols] float32
    step: int
    source: str  # "stored" | "recomputed" | "stored and recomputed"
    mismatch: float = float("nan")  # recomputed heads: max relative key-mass difference to the stored statistics


def pool_heads(layer: int, maps, *, side: int, source: str, mismatch: float = float("nan")) -> LayerThumbnails:
    """LayerThumbnails of a [head, query_pos, key_pos] stack (tensor or array), pooled one head at a time."""
    pooled = np.stack([pool_map(_numpy(head), side) for head in maps])
    return LayerThumbnails(layer, pooled, pool_step(max(maps[0].shape), side), source, mismatch)


def _numpy(values) -> np.ndarray:
    if hasattr(values, "numpy"):  # torch tensors (fp16 from a recompute) -> float32 numpy
        return values.float().numpy()
    return np.asarray(values, dtype=np.float32)
