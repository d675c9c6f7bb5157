"""AVC recalibration and DAMRO outlier removal applied while decoding, and their effect on a scene QA set.

`generate` decodes greedily from the contrastive logits of `workbench.interventions.contrastive` (the plain run and
a contrast run that sees only the blind / outlier image tokens, both KV-cached). Their effect on the scene
questions: `workbench blind --scenes` (workbench/cli/recalibration_scenes.py).
"""

from __future__ import annotations

import torch

from workbench.analyses.blind_tokens import blind_tokens
from workbench.interventions.contrastive import AVC, DAMRO, combine, contrast_embeddings

__all__ = ["generate"]


def generate(tracer, prompt: str, image, spec, *, max_new_tokens: int = 16, system: str | None = None,
             raw: bool = False, found=None) -> dict:
    """Greedy contrastive decoding under `spec` (AVC or DAMRO): {text, ids, kept}, kept = the image token positions
    the contrast run saw. found: a blind_tokens result of this input (computed when None)."""
    from workbench.analyses.tracing import as_tracer
    from workbench.capture.generation import CachedDecoder, eos_ids, forward_inputs, greedy
    from workbench.capture.inputs import prepare_input

    tracer = as_tracer(tracer)
    loaded = tracer.loaded
    if found is None:
        options = ({"layer_gamma": spec.layer_gamma, "lamb": spec.lamb} if isinstance(spec, AVC)
                   else {"top_k": spec.top_k})
        found = blind_tokens(tracer, prompt, image, system=system, raw=raw, **options)
    prepared = prepare_input(loaded, prompt, image, system=system, raw=raw)
    keep = spec.keep(found)
    with torch.inference_mode():
        plain = CachedDecoder(loaded.model)
        first = plain.start(forward_inputs(loaded, prepared.input_ids, prepared.model_inputs)).logits[0, -1]
        contrast = CachedDecoder(loaded.model)
        model_inputs = forward_inputs(loaded, prepared.input_ids, prepared.model_inputs)
        embeds = contrast_embeddings(loaded, model_inputs["input_ids"], model_inputs, keep,
                                     remove=isinstance(spec, DAMRO))
        contrast_first = contrast.start({"inputs_embeds": embeds}).logits[0, -1]

        def feed(token_id: int) -> torch.Tensor:
            return combine(plain.feed(token_id), contrast.feed(token_id), alpha=spec.alpha, beta=spec.beta)

        ids = greedy(combine(first, contrast_first, alpha=spec.alpha, beta=spec.beta), feed,
                     max_new_tokens=max_new_tokens, eos=eos_ids(loaded))
    return {"text": loaded.tokenizer.decode(ids), "ids": ids, "kept": keep}
