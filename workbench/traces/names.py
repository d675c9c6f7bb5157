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
