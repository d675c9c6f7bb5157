"""What a trace records besides attention: the manifest's metadata, numerics verdict and prompt predictions.

Shared by HF capture (`workbench.capture.tracer`) and the front-ends' replay (`workbench.frontends`), so
bundles from either carry the same manifest.
"""

from __future__ import annotations

import datetime

import torch

from workbench.capture.backend import IMPLEMENTATION_NAME
from workbench.models.loaded import LoadedModel
from workbench.traces.tokens import REGIONS


def eos_ids(loaded: LoadedModel) -> set[int]:
    """Every end-of-sequence token id the model, its text config or its tokenizer declares."""
    ids: set[int] = set()
    for source in (getattr(loaded.model, "generation_config", None), loaded.text_config, loaded.tokenizer):
        value = getattr(source, "eos_token_id", None)
        if isinstance(value, int):
            ids.add(value)
        elif isinstance(value, (list, tuple)):
            ids.update(int(v) for v in value)
    return ids


def record_predictions(logits, input_ids, prompt_length, logprob, entropy) -> None:
    """Per prompt row: log p of the next prompt token, and the entropy of the predicted distribution."""
    rows = logits.shape[0]
    first = prompt_length - rows
    for start in range(0, rows, 128):  # row chunks: log-softmax temporaries stay small beside the logits
        end = min(rows, start + 128)
        logp = torch.log_softmax(logits[start:end].float(), -1)
        entropy[first + start:first + end] = -(logp.exp() * logp).sum(-1).cpu()
        targets = input_ids[first + start + 1:min(prompt_length, first + end + 1)]
        if len(targets):
            picked = logp[: len(targets)].gather(-1, targets[:, None].to(logp.device))[:, 0].cpu()
            logprob[first + start:first + start + len(targets)] = picked


def trace_meta(loaded, prepared, tokens, prompt_length, max_new_tokens, layout, plan, recorder) -> dict:
    import transformers

    import workbench

    generated = tokens[prompt_length:]
    stacks = {
        name: {"layers": stack.n_layers, "heads": stack.n_heads, "kv_heads": stack.n_kv_heads,
               "d_model": stack.d_model, "positions": recorder.length.get(name, 0)}
        for name, stack in layout.stacks.items() if name in recorder.length
    }
    return {
        "workbench_version": workbench.__version__,
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "model": {"name": loaded.name, "source": loaded.source, "revision": loaded.revision, "kind": loaded.kind,
                  "rope_scaling": loaded.extra.get("rope_scaling"), "trained_positions": loaded.extra.get("trained_positions") or loaded.max_positions,
                  "architecture": type(loaded.model).__name__, "dtype": loaded.dtype, "device": loaded.device,
                  "attention_backend": IMPLEMENTATION_NAME, "transformers_version": transformers.__version__},
        "inputs": {k: v for k, v in prepared.meta.items()},
        "generation": {"text": "".join(t.text for t in generated), "start": prompt_length, "end": len(tokens),
                       "max_new_tokens": max_new_tokens, "strategy": "greedy",
                       "note": "the token at position p was predicted by query row p - 1"},
        "dims": {"tokens": len(tokens), "regions": list(REGIONS), "stacks": stacks},
        # one_pass_calls: attention calls whose output came from the one-pass kernel (equal to
        # SDPA's up to fp32 rounding) instead of SDPA itself (bit-identical to the uncaptured model)
        "capture": {**plan.to_json(), "one_pass_calls": recorder.fused_calls},
        "checks": numerics_checks(recorder),
    }


def numerics_checks(recorder) -> dict:
    """The manifest's numerics verdict (see workbench/traces/health.py): healthy, and what failed where."""
    from workbench.traces.health import Z_TOLERANCE

    error = recorder.max_normaliser_error
    return {"max_normaliser_error": error if error != float("inf") else 1e308, "non_finite": recorder.non_finite,
            "healthy": recorder.non_finite == 0 and error < Z_TOLERANCE, "z_tolerance": Z_TOLERANCE,
            "flagged": list(recorder.flagged)}
