"""What an attention intervention changes: the next-token distribution and the greedy answer, measured side by
side against the same model without it (two uncaptured greedy generations, no statistics)."""

from __future__ import annotations

import torch

from workbench.capture.inputs import prepare_input
from workbench.capture.interventions import intervening
from workbench.capture.layout import discover_layout


def greedy(loaded, prepared, runtime=None, *, max_new_tokens: int) -> tuple[torch.Tensor, list[int]]:
    """(logits [vocab] at the last prompt row, greedy token ids) with `runtime` applied (None: plain model)."""
    from workbench.capture.trace_meta import eos_ids

    device = loaded.model.device if hasattr(loaded.model, "device") else "cpu"
    forward = {"input_ids": prepared.input_ids.to(device),
               **{k: (v.to(device) if torch.is_tensor(v) else v) for k, v in prepared.model_inputs.items()}}
    if "pixel_values" in forward:
        forward["pixel_values"] = forward["pixel_values"].to(loaded.model.dtype)
    eos, ids = eos_ids(loaded), []
    with torch.inference_mode(), intervening(loaded.model, runtime):
        output = loaded.model(**forward, use_cache=True, logits_to_keep=1)
        first = output.logits[0, -1].float().cpu()
        for _ in range(max_new_tokens):
            next_id = int(output.logits[0, -1].argmax())
            ids.append(next_id)
            if next_id in eos or len(ids) == max_new_tokens:
                break
            output = loaded.model(input_ids=torch.tensor([[next_id]], device=device), cache=output.cache,
                                  use_cache=True)
    return first, ids


def _top(logp: torch.Tensor, tokenizer, k: int = 5) -> list[dict]:
    values, ids = logp.topk(k)
    return [{"id": int(i), "text": tokenizer.decode([int(i)]), "p": round(float(v.exp()), 6)} for v, i in zip(values, ids)]


def effect(loaded, prompt: str, image=None, *, intervention, max_new_tokens: int = 16, system: str | None = None,
           raw: bool = False) -> dict:
    """KL(plain || intervened) and total variation of the next-token distribution at the end of the prompt, the top
    tokens of both, and both greedy answers (with the first step where they part)."""
    if loaded.kind == "encoder":
        return {"available": False, "reason": "an encoder has no next-token distribution"}
    prepared = prepare_input(loaded, prompt, image, system=system, raw=raw)
    image_positions = [t.i for t in prepared.tokens if t.region == "image"]
    runtime = intervention.start(discover_layout(loaded.model), image_positions=image_positions)
    plain_logits, plain_ids = greedy(loaded, prepared, None, max_new_tokens=max_new_tokens)
    new_logits, new_ids = greedy(loaded, prepared, runtime, max_new_tokens=max_new_tokens)
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
