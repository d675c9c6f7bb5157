"""Greedy generation: the one decoding loop of the workbench, and the KV-cached forward it drives.

`greedy` picks each next token (argmax, or the next token of a given continuation), stops at an end-of-sequence
token, and asks `feed(token_id)` for the logits that follow. Everything that generates goes through it: traced
generation (HF capture with a KV cache, other backends with full forwards), VHD's paired with/without-image
runs, and the intervention effect's plain and edited answers. What each caller records happens inside the
`feed` it passes (the capture recorder, an observer), so the loop itself stays the same for all of them.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch


def greedy(first_logits: torch.Tensor, feed: Callable[[int], torch.Tensor], *, max_new_tokens: int,
           eos: set[int], continuation: Sequence[int] | None = None, feed_last: bool = False,
           on_token: Callable[[int, int, torch.Tensor], None] | None = None) -> list[int]:
    """Token ids generated greedily from `first_logits` [vocab] (the prompt's last row).

    feed(token_id) -> logits [vocab] of the row that the new token adds.
    continuation: follow these token ids instead of the argmax (teacher forcing; no stop at EOS).
    feed_last: also feed the last token (a capture records the query row of every generated token).
    on_token(step, token_id, logits): called with the logits [vocab] that predicted each token.
    """
    steps = len(continuation) if continuation is not None else max_new_tokens
    ids: list[int] = []
    logits = first_logits
    for step in range(steps):
        token_id = int(continuation[step]) if continuation is not None else int(logits.argmax())
        ids.append(token_id)
        if on_token is not None:
            on_token(step, token_id, logits)
        stop = continuation is None and token_id in eos
        if (stop or step == steps - 1) and not feed_last:
            break
        logits = feed(token_id)
        if stop:
            break
    return ids


def eos_ids(loaded) -> set[int]:
    """Every end-of-sequence token id the model, its text config or its tokenizer declares."""
    ids: set[int] = set()
    for source in (getattr(loaded.model, "generation_config", None), loaded.text_config, loaded.tokenizer):
        value = getattr(source, "eos_token_id", None)
        if isinstance(value, int):
            ids.add(value)
        elif isinstance(value, (list, tuple)):
            ids.update(int(v) for v in value)
    return ids


def model_device(model) -> torch.device:
    """Where the model's parameters are (CPU for a model without parameters)."""
    try:
        return next(model.parameters()).device
    except StopIteration:
        return torch.device("cpu")


def forward_inputs(loaded, input_ids: torch.Tensor, model_inputs: dict, *, device=None) -> dict:
    """Forward kwargs for `loaded.model`: the token ids [1, query_pos] and the processor's extra inputs, on the
    model's device, with pixels in the model's dtype (a processor returns fp32 pixels, an fp16 model wants fp16)."""
    device = device if device is not None else model_device(loaded.model)
    ids = {} if loaded.kind == "vision" else {"input_ids": input_ids.to(device)}  # an encoder of pixels alone
    forward = {**ids,
               **{k: (v.to(device) if torch.is_tensor(v) else v) for k, v in model_inputs.items()}}
    if torch.is_tensor(forward.get("pixel_values")):
        forward["pixel_values"] = forward["pixel_values"].to(loaded.model.dtype)
    return forward


class CachedDecoder:
    """One sequence through an HF model with the KV cache: the prompt once, then one token per `feed`."""

    def __init__(self, model):
        self.model = model
        self.device = model_device(model)
        self.cache = None
        self.output = None

    def start(self, forward: dict, *, all_logits: bool = False):
        """Run the prompt; returns the model output (logits of every row with all_logits, else the last row)."""
        self.output = self.model(**forward, use_cache=True, logits_to_keep=0 if all_logits else 1)
        self.cache = self.output.cache
        return self.output

    def extend(self, input_ids: torch.Tensor):
        """Run several more tokens [1, query_pos] in one forward after the cached ones; returns the model output
        (logits of its last row only)."""
        self.output = self.model(input_ids=input_ids.to(self.device), cache=self.cache, use_cache=True,
                                 logits_to_keep=1)
        self.cache = self.output.cache
        return self.output

    def feed(self, token_id: int) -> torch.Tensor:
        """Logits [vocab] of the row the new token adds."""
        self.output = self.model(input_ids=torch.tensor([[token_id]], device=self.device), cache=self.cache,
                                 use_cache=True)
        self.cache = self.output.cache
        return self.output.logits[0, -1]
