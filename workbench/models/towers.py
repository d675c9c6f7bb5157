"""A vision-language model's image encoder as a standalone one, for the analyses of the tower alone.

A VLM trace keeps the language model's residual stream (`--hidden`) but not the tower's, so the tower's
high-norm artifact patches (Darcet et al. 2024; `workbench.analyses.artifact_tokens`) need the tower traced on
its own. Traced with the VLM's own image processor, the tower sees exactly the pixels whose patches become the
language model's image tokens, so artifact patches and image tokens can be compared cell by cell.
"""

from __future__ import annotations

from workbench.errors import InputError
from workbench.models.loaded import LoadedModel


def tower_encoder(vlm: LoadedModel) -> LoadedModel:
    """`vlm`'s vision tower (the same module, shared weights) as a kind "vision" model with the VLM's image
    processor: `Tracer.open(tower_encoder(vlm)).trace("", image, hidden_states=True)`."""
    inner = getattr(vlm.model, "model", None)
    tower = getattr(inner, "vision_tower", None) or getattr(vlm.model, "vision_tower", None)
    image_processor = getattr(vlm.processor, "image_processor", None)
    if vlm.kind != "vlm" or tower is None or image_processor is None:
        raise InputError(f"{vlm.name} has no LLaVA-style vision tower with an image processor to trace alone")
    return LoadedModel(f"{vlm.name}:tower", tower, None, "vision", vlm.source, processor=image_processor,
                       revision=vlm.revision)


__all__ = ["tower_encoder"]
