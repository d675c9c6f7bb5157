"""Image tokens laid out on a patch grid one tile at a time.

A token's `patch` is its (row, col) inside its own tile, so the tiles of a tiled family (LLaVA-NeXT's base image
and anyres crops, Idefics3's splits and global image, InternVL's tiles and thumbnail, Gemma 3's pan-and-scan
crops) share one coordinate range: put on a single grid they would land on the same cells. Every view that draws
image tokens on a grid therefore draws one tile, by default the one that shows the whole image (the only tile
the input picture can sit under without cropping it).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

# Families whose whole (downscaled) image comes after its crops, as the last tile; the others that tile put it
# first (LLaVA-NeXT / OneVision's base image, Gemma 3's pan-and-scan) or have no whole-image tile (video frames).
WHOLE_IMAGE_LAST = ("Idefics3", "SmolVLM", "InternVL")


def image_tiles(tokens: Sequence) -> list[int | None]:
    """The tiles of the tokens that carry a patch, in order; [None] for an untiled image, [] for no image."""
    return sorted({t.tile for t in tokens if t.patch is not None}, key=lambda tile: -1 if tile is None else tile)


def whole_image_tile(tokens: Sequence, architecture: str | None) -> int | None:
    """The tile showing the whole image: the last tile for the families of WHOLE_IMAGE_LAST (read from the
    manifest's model architecture, e.g. 'Idefics3ForConditionalGeneration'), else the first; None untiled.
    Tokens without a tile beside tiled ones (LLaVA-OneVision's shrunk mosaic) are never the pick: tile 0 is."""
    tiles = [tile for tile in image_tiles(tokens) if tile is not None]
    if not tiles:
        return None
    last = any(name in (architecture or "") for name in WHOLE_IMAGE_LAST)
    return tiles[-1] if last else tiles[0]


def tile_grid(tokens: Sequence, tile: int | None) -> np.ndarray:
    """[rows, cols] token positions of one tile's image tokens at their (row, col) patch, -1 where none sits;
    tile None takes the tokens without a tile (an untiled image). A [0, 0] array when that tile has none."""
    placed = [(t.i, t.patch) for t in tokens if t.patch is not None and t.tile == tile]
    if not placed:
        return np.zeros((0, 0), dtype=np.int64)
    grid = np.full((1 + max(p[0] for _, p in placed), 1 + max(p[1] for _, p in placed)), -1, dtype=np.int64)
    for position, (row, col) in placed:
        grid[row, col] = position
    return grid
