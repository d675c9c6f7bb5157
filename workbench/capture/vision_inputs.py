"""Turn an image into the inputs of a standalone vision encoder (ViT, DINOv2, CLIP / SigLIP vision models) plus one
labelled `Token` per position of its sequence.

The sequence is [CLS] (absent in SigLIP), then the register tokens (DINOv2 with registers), then the patches in
row-major order. Positions map onto the trace's region vocabulary: [CLS] and registers are "special" (their text
says which: "[CLS]", "[REG 0]", ...), patches are "image" and carry their (row, col) in the patch grid, so every
view that lays image tokens on their patches works unchanged. `position_roles` names the three kinds back.
"""

from __future__ import annotations

import torch

from workbench.errors import InputError
from workbench.models.loaded import LoadedModel
from workbench.traces.tokens import Token

NO_TOKEN_ID = 0  # a vision position has no vocabulary id; bundles want ids >= 0
CLS_TEXT = "[CLS]"
REGISTER_PREFIX = "[REG "
NO_CLS_TYPES = ("siglip_vision_model", "siglip2_vision_model")
VISION_MODEL_TYPES = ("vit", "dinov2", "dinov2_with_registers", "clip_vision_model", "siglip_vision_model")


def prefix_tokens(config) -> tuple[int, int]:
    """([CLS] count, register count) that the encoder puts before its patches."""
    has_cls = getattr(config, "model_type", "") not in NO_CLS_TYPES
    return int(has_cls), int(getattr(config, "num_register_tokens", 0) or 0)


def patch_size(config) -> int:
    size = getattr(config, "patch_size", 0)
    return int(size[0] if isinstance(size, (list, tuple)) else size)


def vision_tokens(config, grid: tuple[int, int]) -> list[Token]:
    """The labelled positions of an encoder's sequence over a rows x cols patch grid."""
    n_cls, n_registers = prefix_tokens(config)
    tokens = [Token(0, NO_TOKEN_ID, CLS_TEXT, "special")] if n_cls else []
    tokens += [Token(n_cls + k, NO_TOKEN_ID, f"{REGISTER_PREFIX}{k}]", "special") for k in range(n_registers)]
    rows, cols = grid
    start = len(tokens)
    tokens += [Token(start + k, NO_TOKEN_ID, f"patch {k // cols},{k % cols}", "image", (k // cols, k % cols))
               for k in range(rows * cols)]
    return tokens


def position_roles(tokens) -> dict[str, list[int]]:
    """{"cls": [...], "register": [...], "patch": [...]} positions of a vision encoder's tokens."""
    roles: dict[str, list[int]] = {"cls": [], "register": [], "patch": []}
    for token in tokens:
        if token.region == "image":
            roles["patch"].append(token.i)
        elif token.text == CLS_TEXT:
            roles["cls"].append(token.i)
        elif token.text.startswith(REGISTER_PREFIX):
            roles["register"].append(token.i)
    return roles


def check_vision_request(loaded: LoadedModel, prompt, image) -> None:
    """Refuse a prompt, or a missing image, for a vision encoder (one line, before any pixel is read)."""
    if prompt is not None and str(prompt).strip():
        raise InputError(f"{loaded.name} is a vision encoder and takes an image only; drop the prompt")
    if image is None:
        raise InputError(f"{loaded.name} is a vision encoder; pass an image with --image")


def vision_input(loaded: LoadedModel, pil_image, image_meta: dict) -> tuple:
    """(input_ids [1, query_pos] of NO_TOKEN_ID, model inputs {pixel_values}, tokens, meta) of an RGB image: the
    fields of a `capture.inputs.PreparedInput`, which wraps them."""
    pixels = loaded.processor(images=pil_image, return_tensors="pt")["pixel_values"]
    patch = patch_size(loaded.model.config)
    grid = (pixels.shape[-2] // patch, pixels.shape[-1] // patch)
    tokens = vision_tokens(loaded.model.config, grid)
    input_ids = torch.full((1, len(tokens)), NO_TOKEN_ID, dtype=torch.long)
    meta = {"prompt": None, "system": None, "raw": True, "chat_template": False, "text": "",
            "image": image_meta, "patch_grid": list(grid), "pixel_size": [int(pixels.shape[-2]), int(pixels.shape[-1])]}
    return input_ids, {"pixel_values": pixels}, tokens, meta
