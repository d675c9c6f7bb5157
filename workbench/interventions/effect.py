"""What an attention intervention changes: the next-token distribution and the greedy answer, measured side by
side against the same model without it (two uncaptured greedy generations through `Tracer.generate`)."""

from __future__ import annotations

import torch

from workbench.capture.inputs import prepare_input


def _top(logp: torch.Tensor, tokenizer, k: int = 5) -> list[dict]:
    values, ids = logp.topk(k)
    return [{"id": int(i), "text": tokenizer.decode([int(i)]), "p": round(float(v.exp()), 6)} for v, i in zip(values, ids)]


def effect(tracer, prompt: str, image=None, *, intervention, max_new_tokens: int = 16, system: str | None = None,
           raw: bool = False) -> dict:
    """KL(plain || intervened) and total variation of the next-token distribution at the end of the prompt, the top
    tokens of both, and both greedy answers (with the first step where they part). tracer: a `Tracer`."""
    loaded = tracer.loaded
    if loaded.kind == "encoder":
        return {"available": False, "reason": "an encoder has no next-token distribution"}
    prepared = prepare_input(loaded, prompt, image, system=system, raw=raw)
    runtime = intervention.start(tracer.layout, image_positions=prepared.image_positions())
    options = {"max_new_tokens": max_new_tokens, "system": system, "raw": raw}
    plain = tracer.generate(prompt, image, **options)
    edited = tracer.generate(prompt, image, edit=runtime, **options)
    plain_logits, plain_ids, new_logits, new_ids = plain.first_logits, plain.token_ids, edited.first_logits, edited.token_ids
    p, q = torch.log_softmax(plain_logits.double(), -1), torch.log_softmax(new_logits.double(), -1)
    parted = next((i for i, (a, b) in enumerate(zip(plain_ids, new_ids)) if a != b),
                  None if len(plain_ids) == len(new_ids) else min(len(plain_ids), len(new_ids)))
    decode = loaded.tokenizer.decode
    return {
        "available": True, "intervention": intervention.to_json(),
        "next_token": {"kl_plain_to_intervened": round(float((p.exp() * (p - q)).sum()), 8),
                       "total_variation": round(float(0.5 * (p.exp() - q.exp()).abs().sum()), 8),
                       "top_changed": int(plain_logits.argmax()) != int(new_logits.argmax()),
                       "plain_top": _top(p, loaded.tokenizer), "intervened_top": _top(q, loaded.tokenizer)},
        "answer": {"plain": decode(plain_ids), "intervened": decode(new_ids), "changed": plain_ids != new_ids,
                   "first_changed_step": parted},
        "moved": runtime.report(),
    }
