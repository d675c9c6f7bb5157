"""Names and labels shared by everything that writes or reads a trace: tensor names and key regions per stack."""

from __future__ import annotations

import torch

from workbench.traces.tokens import REGIONS


def tensor_name(stack: str, layer: int, stat: str) -> str:
    """'layer_05.key_mass' (text stack) or 'vision.layer_05.key_mass'."""
    return f"{'' if stack == 'text' else stack + '.'}layer_{layer:02d}.{stat}"


def vision_regions(n_positions: int) -> torch.Tensor:
    """[key_pos] regions of a vision tower's sequence: [CLS] ("special"), then image patches ("image")."""
    return torch.tensor([REGIONS.index("special")] + [REGIONS.index("image")] * (n_positions - 1), dtype=torch.long)


def tiled_regions(n_positions: int, per_tile: int, real: int) -> torch.Tensor:
    """[key_pos] regions of tiles of `per_tile` positions each: [CLS] ("special"), `real - 1` patches ("image"),
    then padding ("special"), tile after tile (Mllama's tower and its cross-attention keys)."""
    tile = [REGIONS.index("special")] + [REGIONS.index("image")] * (real - 1) + \
        [REGIONS.index("special")] * (per_tile - real)
    return torch.tensor(tile * (n_positions // per_tile), dtype=torch.long)


def stack_key_regions(stack_dims: dict) -> torch.Tensor:
    """[key_pos] regions of a non-text stack from its manifest dims: a rectangular stack's `key_places` ([tile]:
    a [CLS], "special"; [tile, row, col]: a patch, "image"), a tiled tower's `tile_positions` (positions a tile
    takes, of which [CLS] and patches), else a tower's [CLS] then patches."""
    if stack_dims.get("key_places") is not None:
        return torch.tensor([REGIONS.index("image" if len(place) == 3 else "special")
                             for place in stack_dims["key_places"]], dtype=torch.long)
    if stack_dims.get("tile_positions") is not None:
        return tiled_regions(stack_dims["positions"], *stack_dims["tile_positions"])
    return vision_regions(stack_dims["positions"])
