"""What a loaded model is to the rest of the workbench: the HF module plus how to feed it."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

ModelKind = Literal["causal", "encoder", "vlm", "vision"]


@dataclass
class LoadedModel:
    """A transformers model ready for tracing.

    kind: "causal" (decoder LM, can generate), "encoder" (bidirectional, no generation) or "vlm"
    (LlavaForConditionalGeneration-style: vision tower + projector + causal LM, takes an image) or "vision" (a
    standalone image encoder: ViT, DINOv2, CLIP / SigLIP vision models; takes an image only, no tokenizer).
    source: where the weights came from (registry name, local directory or hub id), for provenance.
    """

    name: str
    model: Any
    tokenizer: Any
    kind: ModelKind
    source: str
    processor: Any = None
    revision: str | None = None
    extra: dict = field(default_factory=dict)

    @property
    def text_config(self):
        config = self.model.config
        return getattr(config, "text_config", None) or config

    @property
    def max_positions(self) -> int | None:
        """The longest sequence the model was built for (None when the config does not say)."""
        return getattr(self.text_config, "max_position_embeddings", None)

    @property
    def dtype(self) -> str:
        return str(next(self.model.parameters()).dtype).removeprefix("torch.")

    @property
    def device(self) -> str:
        return str(next(self.model.parameters()).device)

    @property
    def has_chat_template(self) -> bool:
        holder = self.processor if self.processor is not None else self.tokenizer
        return bool(getattr(holder, "chat_template", None))
