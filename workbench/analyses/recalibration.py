"""AVC recalibration and DAMRO outlier removal applied while decoding, and their effect on a scene QA set.

`generate` decodes greedily from the contrastive logits of `workbench.interventions.contrastive` (the plain run and
a contrast run that sees only the blind / outlier image tokens, both KV-cached). `trace` captures such a generation
as a bundle (`workbench trace --intervene avc`): the tokens come from `generate`, the attention from the plain run
over them (the capture follows them as a continuation of the one greedy loop, so the contrast run's forwards never
reach the recorder), and the manifest records the spec like ACT / VAR. Their effect on the scene questions:
`workbench blind --scenes` (workbench/cli/recalibration_scenes.py).
"""

from __future__ import annotations

import torch

from workbench.analyses.blind_tokens import blind_tokens
from workbench.interventions.contrastive import AVC, DAMRO, combine, contrast_embeddings

__all__ = ["generate", "trace"]


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
        found = _found(tracer, prompt, image, spec, system=system, raw=raw)
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


def trace(tracer, prompt: str, image, spec, *, max_new_tokens: int = 16, system: str | None = None,
          raw: bool = False, found=None, **trace_options):
    """A Trace of (prompt, image) whose generated tokens are `generate`'s under `spec`, with the plain model's
    attention over them; meta["capture"]["intervention"] records the spec and the image token positions its contrast
    run kept, results/blind_tokens.json the blind / outlier tokens found. trace_options go to `Tracer.trace`
    (plan, max_length, progress, capture options)."""
    from workbench.analyses.tracing import as_tracer

    tracer = as_tracer(tracer)
    if found is None:
        found = _found(tracer, prompt, image, spec, system=system, raw=raw)
    decoded = generate(tracer, prompt, image, spec, max_new_tokens=max_new_tokens, system=system, raw=raw,
                       found=found)
    result = tracer.trace(prompt, image, max_new_tokens=max_new_tokens, system=system, raw=raw,
                          continuation=decoded["ids"], **trace_options)
    result.meta["capture"]["intervention"] = {**spec.to_json(), "report": {"kept": [int(p) for p in decoded["kept"]]}}
    result.add_result("blind_tokens", found.to_json())
    return result


def _found(tracer, prompt: str, image, spec, *, system, raw):
    """The blind / outlier tokens `spec` contrasts against, found with its own options."""
    options = {"layer_gamma": spec.layer_gamma, "lamb": spec.lamb} if isinstance(spec, AVC) else {"top_k": spec.top_k}
    return blind_tokens(tracer, prompt, image, system=system, raw=raw, **options)
