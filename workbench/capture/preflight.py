"""The input length against the model's context, checked by `Tracer.trace` before the first forward (the
capture plan's own checks are `CapturePlan.check`)."""

from __future__ import annotations

import warnings

from workbench.errors import InputError
from workbench.models.loaded import LoadedModel


def check_lengths(loaded: LoadedModel, prompt_length: int, max_new_tokens: int, max_length: int | None) -> None:
    """Refuse inputs past the model's context (unless max_length allows it); warn past the trained length."""
    if max_new_tokens < 0:
        raise InputError("--max-new-tokens must be 0 or more")
    if max_new_tokens and loaded.kind in ("encoder", "vision"):
        raise InputError(f"{loaded.name} is an encoder and cannot generate; use --max-new-tokens 0")
    trained = loaded.extra.get("trained_positions") or loaded.max_positions
    if max_length and trained and max_length > trained and _learned_positions(loaded):
        raise InputError(f"{loaded.name} has learned absolute position embeddings for {trained} positions and "
                         "cannot run past them; shorten the input")
    limit = max(max_length or 0, loaded.max_positions or 0) or None
    total = prompt_length + max_new_tokens
    if limit is not None and total > limit:
        raise InputError(
            f"the input is {prompt_length} tokens + {max_new_tokens} new tokens, longer than {loaded.name}'s context "
            f"of {limit}; shorten the prompt, lower --max-new-tokens, or pass --max-length N to go past it on purpose"
        )
    if trained and total > trained:
        scaling = loaded.extra.get("rope_scaling")
        how = f"with {scaling['type']} RoPE scaling x{scaling['factor']:g}" if scaling else "without RoPE scaling"
        warnings.warn(f"{loaded.name} was trained on {trained} positions; this input has {total}, run {how}: "
                      "attention past the trained length is not what the model learned", UserWarning, stacklevel=3)


def _learned_positions(loaded: LoadedModel) -> bool:
    config = loaded.text_config
    return not (getattr(config, "rope_parameters", None) or getattr(config, "rope_theta", None))


def local_attention_span(loaded: LoadedModel) -> int | None:
    """The shortest key span a layer of this model attends over (sliding window or attention chunk), or None
    when every layer sees the whole past."""
    config = loaded.text_config
    spans = []
    window = getattr(config, "sliding_window", None)
    if window and getattr(config, "use_sliding_window", True) is not False:
        spans.append(int(window))
    chunk = getattr(config, "attention_chunk_size", None)
    if chunk:
        spans.append(int(chunk))
    return min(spans) if spans else None


def check_intervention_length(loaded: LoadedModel, total_positions: int) -> None:
    """Interventions edit keys by their absolute position; a sliding-window (or chunked) layer's cache holds only
    the latest keys, so past the span a decode step's keys no longer start at 0. Refuse rather than edit the
    wrong keys."""
    span = local_attention_span(loaded)
    if span is not None and total_positions > span:
        raise InputError(f"{loaded.name} has sliding-window or chunked attention over {span} positions and this "
                         f"input reaches {total_positions}; interventions (--intervene) are supported only within "
                         f"that span: shorten the prompt or lower --max-new-tokens")
