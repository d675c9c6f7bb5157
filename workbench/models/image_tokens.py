"""Where each image token of a vision-language model's input comes from: its (row, col) patch and its tile.

Families lay image features into the language model's sequence differently; the arithmetic here follows each
family's processor and feature packing, written out in our words (docs/models.md draws the layouts):

- LLaVA: one grid of side x side patches (side = image size / patch size), row-major, after a dropped [CLS].
- LLaVA-NeXT / LLaVA-OneVision ("anyres"): tile 0 is the whole image resized to the base size (side x side
  patches, row-major); then the image is tiled into a grid of base-size crops (tiles 1.. in row-major order),
  their patches joined into one mosaic, the padding rows (or columns) the resize added cut off, and the mosaic
  read row by row with one image-newline token (no patch) closing every row. OneVision shrinks a mosaic larger
  than its `anyres_max_N` budget by bilinear interpolation; its tokens then carry the (row, col) of the shrunk
  grid and no tile.
- Qwen2-VL / Qwen2.5-VL / Qwen3-VL: the image is resized to a multiple of patch x merge pixels; each token is
  one merge x merge block of patches, row-major over the (height / merge, width / merge) grid of the image;
  a video's frames (temporal patches) are the tiles.
- Idefics3 / SmolVLM: an image larger than one tile is split into rows x cols tiles (tiles 0.. row-major), then
  the whole image downscaled to one tile comes last (tile rows x cols); pixel shuffle folds each scale x scale
  block of a tile's patches into one token, so a tile holds (side / scale)^2 tokens, row-major.
- InternVL: the image cut into a grid of tiles (tiles 0.. row-major) plus, when there are several, a thumbnail
  of the whole image (the last tile); pixel shuffle folds 2x2 patches of a tile into one token, row-major.
- Mllama: the image is one <|image|> token of the text; its tiles' features are the keys of the cross-attention
  layers (the trace's "cross" stack), not positions of the sequence, so the token carries no patch.
- Gemma 3: the SigLIP patch grid average-pooled to sqrt(mm_tokens_per_image) tokens a side, row-major; with
  pan-and-scan, the whole image (tile 0) is followed by its crops (tiles 1..), each its own pooled grid.

A token's `patch` is (row, col) in its tile's grid of tokens; `tile` is the tile's index in the vision tower's
batch (the order the tower encoded them), None for families without tiles.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass


@dataclass(frozen=True)
class ImageTokenPlace:
    """Where one image token's feature comes from; patch None for tokens that carry no patch (image newlines)."""

    patch: tuple[int, int] | None
    tile: int | None = None


def image_token_places(config, encoded, n_image_tokens: int) -> list[ImageTokenPlace]:
    """The place of each of the `n_image_tokens` image tokens of one processed image, in sequence order.

    config: the model's config; encoded: the processor's output (image_sizes, image_grid_thw... as the family
    has them). Families without a rule here fall back to a square grid (with or without a leading [CLS])."""
    family = getattr(config, "model_type", "")
    if family in ("llava_next", "llava_onevision"):
        return _anyres(config, encoded, family)
    if family in ("qwen2_vl", "qwen2_5_vl", "qwen3_vl"):
        return _merged_grid(config, encoded)
    if family == "gemma3":
        side = math.isqrt(config.mm_tokens_per_image)
        tiles = n_image_tokens // (side * side)
        return [ImageTokenPlace((k // side, k % side), tile if tiles > 1 else None)
                for tile in range(tiles) for k in range(side * side)]
    if family in ("idefics3", "smolvlm"):
        return _split_image(config, encoded, n_image_tokens)
    if family == "mllama":  # one <|image|> token; the patches are the cross-attention layers' keys, not tokens
        return [ImageTokenPlace(None)] * n_image_tokens
    if family == "internvl":  # tiles of (side * downsample_ratio)^2 tokens each, in the tower's order
        vision = config.vision_config
        side = int(vision.image_size[0] // vision.patch_size[0] * config.downsample_ratio)
        tiles = n_image_tokens // (side * side)
        return [ImageTokenPlace((k // side, k % side), tile if tiles > 1 else None)
                for tile in range(tiles) for k in range(side * side)]
    return square_grid(n_image_tokens)


def square_grid(n_image_tokens: int) -> list[ImageTokenPlace]:
    """side x side tokens row-major, optionally after one leading token without a patch (a kept [CLS])."""
    for extra in (0, 1):
        side = math.isqrt(n_image_tokens - extra)
        if side * side == n_image_tokens - extra:
            return [ImageTokenPlace(None)] * extra + [ImageTokenPlace((k // side, k % side))
                                                      for k in range(side * side)]
    return [ImageTokenPlace(None)] * n_image_tokens


def _anyres(config, encoded, family: str) -> list[ImageTokenPlace]:
    from transformers.image_processing_utils import select_best_resolution

    vision = config.vision_config
    side = vision.image_size // vision.patch_size
    image_height, image_width = (int(v) for v in encoded["image_sizes"][0])
    best_height, best_width = select_best_resolution((image_height, image_width), config.image_grid_pinpoints)
    tiles_high, tiles_wide = best_height // vision.image_size, best_width // vision.image_size
    places = [ImageTokenPlace((k // side, k % side), 0) for k in range(side * side)]
    rows, cols = _unpadded_span(image_height, image_width, tiles_high * side, tiles_wide * side)
    n_rows, n_cols = rows[1] - rows[0], cols[1] - cols[0]
    if family == "llava_onevision":
        budget = int(str(config.vision_aspect_ratio).removeprefix("anyres_max_"))
        ratio = math.sqrt(n_rows * n_cols / (budget * side * side))
        if ratio > 1.1:  # interpolated down: the tokens no longer sit on single tiles
            shrunk_rows, shrunk_cols = int(n_rows // ratio), int(n_cols // ratio)
            for row in range(shrunk_rows):
                places += [ImageTokenPlace((row, col)) for col in range(shrunk_cols)] + [ImageTokenPlace(None)]
            return places
    for row in range(rows[0], rows[1]):
        for col in range(cols[0], cols[1]):
            tile = 1 + (row // side) * tiles_wide + col // side
            places.append(ImageTokenPlace((row % side, col % side), tile))
        places.append(ImageTokenPlace(None))  # the image-newline token closing the row
    return places


def _unpadded_span(image_height: int, image_width: int, grid_height: int, grid_width: int):
    """([first, end) rows, [first, end) cols) of a grid_height x grid_width mosaic that hold the image: the resize
    kept the aspect ratio and padded the short side evenly, and those padding rows / columns are dropped."""
    if image_width / image_height > grid_width / grid_height:  # wider than the mosaic: padded top and bottom
        kept = int(round(image_height * (grid_width / image_width), 7))
        padding = (grid_height - kept) // 2
        return (padding, grid_height - padding), (0, grid_width)
    kept = int(round(image_width * (grid_height / image_height), 7))
    padding = (grid_width - kept) // 2
    return (0, grid_height), (padding, grid_width - padding)


def _merged_grid(config, encoded) -> list[ImageTokenPlace]:
    merge = config.vision_config.spatial_merge_size
    frames, height, width = (int(v) for v in encoded["image_grid_thw"][0])
    rows, cols = height // merge, width // merge
    return [ImageTokenPlace((k // cols, k % cols), frame if frames > 1 else None)
            for frame in range(frames) for k in range(rows * cols)]


def _split_image(config, encoded, n_image_tokens: int) -> list[ImageTokenPlace]:
    vision = config.vision_config
    side = vision.image_size // vision.patch_size // config.scale_factor
    replacement = "".join(r["replacement"] for r in encoded.get("text_replacements") or [])
    tags = [(int(row), int(col)) for row, col in re.findall(r"<row_(\d+)_col_(\d+)>", replacement)]
    n_tiles = n_image_tokens // (side * side)
    if len(tags) != n_tiles - (1 if tags else 0) or n_tiles * side * side != n_image_tokens:
        return square_grid(n_image_tokens)  # a layout this rule does not know: no patches rather than wrong ones
    return [ImageTokenPlace((k // side, k % side), tile) for tile in range(n_tiles) for k in range(side * side)]


def cross_key_places(config, n_keys: int) -> list[ImageTokenPlace]:
    """Mllama's cross-attention keys, in key order: tile after tile (the tower's order, padding tiles included),
    each its [CLS] (patch None) then side x side patches row-major."""
    vision = config.vision_config
    side = vision.image_size // vision.patch_size
    per_tile = 1 + side * side
    return [ImageTokenPlace(None if k % per_tile == 0 else divmod(k % per_tile - 1, side), k // per_tile)
            for k in range(n_keys)]
