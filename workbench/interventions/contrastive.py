"""Contrastive decoding against attention-drawing image tokens: AVC's recalibration (Woo et al. 2024, reference
sangminwoo/AvisC) and DAMRO's outlier removal (Gong et al. 2024, reference coder-gx/DAMRO).

Both run a second, KV-cached sequence beside the plain one and decode from
    logits' = (1 + alpha) * logits - alpha * logits_contrast,   restricted to tokens whose plain logit is at least
              log(beta) + max(logits)   (the adaptive plausibility cut: p >= beta * p_max),
where the contrast sequence sees only the suspect image tokens:
- AVC: the image embeddings of every NON-blind image token are zeroed (the reference's "zeros" masking), so the
  contrast run sees the blind tokens only; blind tokens from the plain prompt forward (`analyses.blind_tokens`).
- DAMRO: the image tokens other than the top-k [CLS]-attention outliers are removed from the sequence, so the
  contrast run sees k image tokens.
The references sample; the workbench decodes greedily (argmax of logits'; the loop is
`workbench.analyses.recalibration`, which finds the tokens and traces them: `workbench trace --intervene avc`
records the plain run's attention over the contrastively decoded tokens). Specs parse from `avc:alpha=1` /
`damro:top_k=10,alpha=2` like the attention interventions (`spec.parse(text, kinds=DECODING)`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields

import torch

from workbench.errors import InputError


@dataclass(frozen=True)
class AVC:
    """AVC (AvisC) contrastive decoding; defaults of the reference's LLaVA POPE script."""

    layer_gamma: float = 0.5
    lamb: float = 0.99
    alpha: float = 1.0
    beta: float = 0.1

    name = "avc"
    decoding = True  # changes the decoding loop, not attention (`recalibration.trace` captures it)

    def __post_init__(self):
        _check(self.name, self.alpha, self.beta)
        if not 0.0 < self.layer_gamma <= 1.0:
            raise InputError(f"avc: layer_gamma must lie in (0, 1], not {self.layer_gamma}")

    def keep(self, found) -> list[int]:
        """Image token positions the contrast run keeps (the blind tokens)."""
        return list(found.blind)

    def to_json(self) -> dict:
        return {"name": self.name, **{f.name: getattr(self, f.name) for f in fields(self)}}


@dataclass(frozen=True)
class DAMRO:
    """DAMRO contrastive decoding; top_k 10 and alpha 2 as the reference's run scripts (LLaVA-1.5)."""

    top_k: int = 10
    alpha: float = 2.0
    beta: float = 0.1

    name = "damro"
    decoding = True

    def __post_init__(self):
        _check(self.name, self.alpha, self.beta)
        if self.top_k < 1:
            raise InputError(f"damro: top_k must be at least 1, not {self.top_k}")

    def keep(self, found) -> list[int]:
        return list(found.outliers)

    def to_json(self) -> dict:
        return {"name": self.name, **{f.name: getattr(self, f.name) for f in fields(self)}}


def _check(name: str, alpha: float, beta: float) -> None:
    if not (math.isfinite(alpha) and alpha >= 0):
        raise InputError(f"{name}: alpha must be a finite number >= 0, not {alpha}")
    if not 0.0 < beta <= 1.0:
        raise InputError(f"{name}: beta must lie in (0, 1], not {beta}")


def combine(logits: torch.Tensor, contrast: torch.Tensor, *, alpha: float, beta: float) -> torch.Tensor:
    """(1 + alpha) logits - alpha contrast, -inf where the plain logit is below log(beta) + max (fp32)."""
    logits, contrast = logits.float(), contrast.float()
    cutoff = math.log(beta) + logits.max(-1, keepdim=True).values
    return ((1 + alpha) * logits - alpha * contrast).masked_fill(logits < cutoff, float("-inf"))


def contrast_embeddings(loaded, input_ids: torch.Tensor, model_inputs: dict, keep, *, remove: bool) -> torch.Tensor:
    """Input embeddings [1, position, d_model] of the contrast sequence: the image features merged as the model
    merges them, then the image tokens not in `keep` zeroed (AVC) or removed from the sequence (DAMRO)."""
    model = loaded.model
    image_token = model.config.image_token_id
    embeds = model.get_input_embeddings()(input_ids).clone()
    features = model.get_image_features(pixel_values=model_inputs["pixel_values"].to(model.dtype),
                                        vision_feature_layer=model.config.vision_feature_layer,
                                        vision_feature_select_strategy=model.config.vision_feature_select_strategy)
    features = torch.cat(list(features.pooler_output), 0) if hasattr(features, "pooler_output") else features
    image = (input_ids[0] == image_token).nonzero().flatten()
    embeds[0, image] = features.reshape(-1, embeds.shape[-1]).to(embeds.dtype)
    dropped = torch.tensor([int(p) not in set(keep) for p in image.tolist()], dtype=torch.bool)
    if not remove:
        embeds[0, image[dropped]] = 0.0
        return embeds
    kept = torch.ones(input_ids.shape[1], dtype=torch.bool)
    kept[image[dropped]] = False
    return embeds[:, kept]
