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
    """Token ids generated greedily from `first_logits` [vocab] (the prompt's last row): `greedy_rows` for one row.

    feed(token_id) -> logits [vocab] of the row that the new token adds.
    continuation: follow these token ids instead of the argmax (teacher forcing; no stop at EOS).
    feed_last: also feed the last token (a capture records the query row of every generated token).
    on_token(step, token_id, logits): called with the logits [vocab] that predicted each token.
    """
    return greedy_rows(
        first_logits[None], lambda fed: feed(fed[0])[None], max_new_tokens=max_new_tokens, eos=eos,
        continuations=[continuation] if continuation is not None else None, feed_last=feed_last,
        on_token=(lambda row, step, token_id, logits: on_token(step, token_id, logits)) if on_token else None)[0]


def greedy_rows(first_logits: torch.Tensor, feed: Callable[[dict[int, int]], torch.Tensor], *, max_new_tokens: int,
                eos: set[int], continuations: Sequence[Sequence[int]] | None = None, feed_last: bool = False,
                on_token: Callable[[int, int, int, torch.Tensor], None] | None = None) -> list[list[int]]:
    """Token ids generated greedily for each row of a batch, from `first_logits` [batch, vocab]; each row stops on
    its own (at an end-of-sequence token or after its last step) while the others go on.

    feed({row: token_id}) -> logits [batch, vocab] of the rows the new tokens add (rows not fed: anything).
    continuations: per row, follow these token ids instead of the argmax (teacher forcing; no stop at EOS).
    feed_last: also feed each row's last token (a capture records the query row of every generated token).
    on_token(row, step, token_id, logits): called with the logits [vocab] that predicted each token.
    """
    rows = first_logits.shape[0]
    steps = [len(c) for c in continuations] if continuations is not None else [max_new_tokens] * rows
    ids: list[list[int]] = [[] for _ in range(rows)]
    live = [steps[row] > 0 for row in range(rows)]
    logits = first_logits
    for step in range(max(steps, default=0)):
        fed: dict[int, int] = {}
        for row in range(rows):
            if not live[row]:
                continue
            forced = continuations[row] if continuations is not None else None
            token_id = int(forced[step]) if forced is not None else int(logits[row].argmax())
            ids[row].append(token_id)
            if on_token is not None:
                on_token(row, step, token_id, logits[row])
            last = (forced is None and token_id in eos) or step == steps[row] - 1
            live[row] = not last
            if feed_last or not last:
                fed[row] = token_id
        if not fed:
            break
        logits = feed(fed)
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
    mask = forward.get("cross_attention_mask")
    if torch.is_tensor(mask) and "input_ids" in forward:  # Mllama's: one row per token, the last repeated after it
        n = forward["input_ids"].shape[1]
        forward["cross_attention_mask"] = torch.cat(
            [mask[:, :n], mask[:, -1:].expand(-1, max(0, n - mask.shape[1]), -1, -1)], dim=1)
    return forward


class CachedDecoder:
    """One sequence through an HF model with the KV cache: the prompt once, then one token per `feed`."""

    def __init__(self, model):
        self.model = model
        self.device = model_device(model)
        self.cache = None
        self.output = None
        self.last_cross_row = None

    def start(self, forward: dict, *, all_logits: bool = False):
        """Run the prompt; returns the model output (logits of every row with all_logits, else the last row)."""
        self.output = self.model(**forward, use_cache=True, logits_to_keep=0 if all_logits else 1)
        self.cache = self.output.cache
        # Mllama's cross-attention mask (which image tiles each token sees) goes with every later token too: its
        # last row, repeated, as transformers' generation does; without it decode rows would see padding tiles
        mask = forward.get("cross_attention_mask")
        self.last_cross_row = mask[:, -1:] if mask is not None else None
        return self.output

    def _carried(self, n_tokens: int) -> dict:
        if self.last_cross_row is None:
            return {}
        return {"cross_attention_mask": self.last_cross_row.expand(-1, n_tokens, -1, -1)}

    def extend(self, input_ids: torch.Tensor):
        """Run several more tokens [1, query_pos] in one forward after the cached ones; returns the model output
        (logits of its last row only)."""
        self.output = self.model(input_ids=input_ids.to(self.device), cache=self.cache, use_cache=True,
                                 logits_to_keep=1, **self._carried(input_ids.shape[1]))
        self.cache = self.output.cache
        return self.output

    def feed(self, token_id: int) -> torch.Tensor:
        """Logits [vocab] of the row the new token adds."""
        self.output = self.model(input_ids=torch.tensor([[token_id]], device=self.device), cache=self.cache,
                                 use_cache=True, **self._carried(1))
        self.cache = self.output.cache
        return self.output.logits[0, -1]


class PaddedDecoder:
    """Several sequences through an HF model with the KV cache, left-padded to one length: the prompts in one
    forward, then one token per row per `feed`. The attention mask hides every padded key, and the position ids
    count each row's own tokens (transformers derives positions from the cache length alone, which the padding
    would shift), so each row computes what it computes alone."""

    def __init__(self, model, pad_id: int):
        self.model = model
        self.device = model_device(model)
        self.pad_id = pad_id
        self.cache = None
        self.mask = None  # [batch, key_pos] 1 = a real token of the row
        self.next_position = None  # [batch] the position of each row's next token

    def start(self, forward: dict, attention_mask: torch.Tensor, *, all_logits: bool = False):
        """Run the left-padded prompts (forward's input_ids [batch, query_pos]); returns the model output."""
        self.mask = attention_mask.to(self.device)
        positions = (self.mask.cumsum(-1) - 1).clamp(min=0)
        self.next_position = self.mask.sum(-1)
        output = self.model(**forward, attention_mask=self.mask, position_ids=positions, use_cache=True,
                            logits_to_keep=0 if all_logits else 1)
        self.cache = output.cache
        return output

    def feed(self, fed: dict[int, int]) -> torch.Tensor:
        """Logits [batch, vocab] of the rows that `fed` ({row: token_id}) adds; rows not fed get a hidden pad."""
        rows = self.mask.shape[0]
        ids = torch.full((rows, 1), self.pad_id, dtype=torch.long, device=self.device)
        column = torch.zeros((rows, 1), dtype=self.mask.dtype, device=self.device)
        for row, token_id in fed.items():
            ids[row, 0], column[row, 0] = token_id, 1
        self.mask = torch.cat([self.mask, column], dim=1)
        output = self.model(input_ids=ids, attention_mask=self.mask, position_ids=self.next_position[:, None],
                            cache=self.cache, use_cache=True)
        self.next_position = self.next_position + column[:, 0]
        self.cache = output.cache
        return output.logits[:, -1]
