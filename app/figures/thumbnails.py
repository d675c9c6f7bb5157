"""Small-multiples images: pooled attention maps rendered as PNG data URIs with numpy and Pillow (no plotly).

Hundreds of plotly heatmaps on one page are slow to draw; a 64 x 64 PNG is a few kB and draws instantly.
Each thumbnail has its own colour limit, the 99th percentile of its positive cells, so a head whose weights
are all small still shows its pattern, and one saturated sink cell does not wash out the rest.
"""

from __future__ import annotations

import base64
import io

import numpy as np

LOW = np.array([255, 255, 255], dtype=np.float32)  # weight 0: white
HIGH = np.array([8, 48, 107], dtype=np.float32)  # the colour limit and above: dark blue (plotly's "Blues" end)
LIMIT_PERCENTILE = 99.0


def colour_limit(pooled: np.ndarray) -> float:
    """The weight drawn darkest: the 99th percentile of the positive cells (1.0 for an all-zero map)."""
    positive = pooled[pooled > 0]
    return float(np.percentile(positive, LIMIT_PERCENTILE)) if positive.size else 1.0


def thumbnail_rgb(pooled: np.ndarray, limit: float) -> np.ndarray:
    """[rows, cols] weights -> [rows, cols, 3] uint8, white at 0 to dark blue at `limit` (clipped above)."""
    share = np.clip(np.nan_to_num(np.asarray(pooled, dtype=np.float32) / max(limit, 1e-12)), 0.0, 1.0)
    return np.rint(LOW + share[..., None] * (HIGH - LOW)).astype(np.uint8)


def thumbnail_uri(pooled: np.ndarray) -> tuple[str, float]:
    """(PNG data URI, colour limit) of one pooled map; query rows top to bottom, keys left to right."""
    from PIL import Image

    limit = colour_limit(pooled)
    buffer = io.BytesIO()
    Image.fromarray(thumbnail_rgb(pooled, limit), mode="RGB").save(buffer, format="PNG", optimize=False)
    return f"data:image/png;base64,{base64.b64encode(buffer.getvalue()).decode()}", limit
