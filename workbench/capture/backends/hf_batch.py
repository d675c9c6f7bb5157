"""Batched capture on the transformers backend: several inputs in one left-padded forward (and one batched greedy
generation with per-row stopping), each recorded as if it ran alone.

The prompts are left-padded to the longest, so every row's last token sits in the last column and a decode step
adds one column for all rows. The attention mask hides the padded keys, the position ids count each row's own
tokens (`generation.PaddedDecoder`), and each row is recorded by its own `Recorder` from its unpadded slice of
every attention call (`capture/rows.py`). A row that stops (end-of-sequence token or its last step) is no longer
recorded; the forward still carries it until every row has stopped.
"""

from __future__ import annotations

import torch

from workbench.capture import heap
from workbench.capture.attention import IMPLEMENTATION_NAME, capturing
from workbench.capture.backends.captured import Captured
from workbench.capture.backends.hf import MAX_PROMPT_LOGITS
from workbench.capture.generation import PaddedDecoder, forward_inputs, greedy_rows
from workbench.capture.predictions import Predictions
from workbench.capture.recorder import Recorder
from workbench.capture.rows import RowRecorders
from workbench.traces.tokens import REGIONS, Token

BATCHED_MODEL_INPUTS = ("pixel_values",)  # processor outputs a batch can stack (one image per row)
# Model types whose positions or masks the padded forward does not reproduce: PaliGemma counts positions from 1
# and attends both ways over its prefix (checked: its batched greedy tokens differed from one at a time).
NOT_PADDABLE = {"paligemma": "PaliGemma's 1-based positions and prefix attention"}


def batchable(loaded, prepared: list, plan) -> str | None:
    """Why these prepared inputs cannot share a forward (None: they can). Such inputs are traced one at a time."""
    if loaded.kind not in ("causal", "vlm"):
        return f"a model of kind {loaded.kind} (no padded forward yet)"
    if plan.decomposition:
        return "decomposition requested"
    model_type = getattr(loaded.model.config, "model_type", None)
    if model_type in NOT_PADDABLE:
        return NOT_PADDABLE[model_type]
    keys = {frozenset(p.model_inputs) for p in prepared}
    if len(keys) > 1:
        return "inputs with and without images"
    extra = set(next(iter(keys)))
    if extra - set(BATCHED_MODEL_INPUTS):
        return f"processor outputs {', '.join(sorted(extra - set(BATCHED_MODEL_INPUTS)))}"
    if "pixel_values" in extra and any(p.model_inputs["pixel_values"].shape[0] != 1 for p in prepared):
        return "several images in one input"
    return None


def padded_groups(lengths: list[int], vocab: int) -> list[list[int]]:
    """Consecutive inputs (by index) that share a forward: as many as keep the padded batch's prompt logits
    (rows x longest x vocab) within what one traced prompt may hold (MAX_PROMPT_LOGITS), so a batch never needs
    more memory for logits than the longest single trace; an input over that bound runs alone."""
    groups: list[list[int]] = []
    longest = 0
    for index, length in enumerate(lengths):
        if groups and (len(groups[-1]) + 1) * max(longest, length) * vocab <= MAX_PROMPT_LOGITS:
            groups[-1].append(index)
            longest = max(longest, length)
        else:
            groups.append([index])
            longest = length
    return groups


def pad_token_id(loaded) -> int:
    """The id padded positions carry (hidden by the mask, so any id the model embeds will do)."""
    tokenizer = loaded.tokenizer
    for candidate in (getattr(tokenizer, "pad_token_id", None), getattr(tokenizer, "eos_token_id", None)):
        if isinstance(candidate, int):
            return candidate
    return 0


def capture_batch(backend, prepared: list, plan, *, max_new_tokens: int, eos: set[int], progress=None) -> list[Captured]:
    """One Captured per prepared input (see `batchable`), from one padded forward and one batched generation."""
    loaded, layout = backend.loaded, backend.layout
    lengths = [p.input_ids.shape[1] for p in prepared]
    longest = max(lengths)
    pads = [longest - n for n in lengths]
    recorders = [Recorder(layout, plan, text_capacity=n + max_new_tokens, prompt_length=n) for n in lengths]
    for recorder, item in zip(recorders, prepared, strict=True):
        recorder.set_regions("text", torch.tensor([REGIONS.index(t.region) for t in item.tokens]))
    tokens = [list(p.tokens) for p in prepared]
    predictions = [Predictions(n + max_new_tokens) for n in lengths]
    input_ids = torch.full((len(prepared), longest), pad_token_id(loaded), dtype=torch.long)
    attention_mask = torch.zeros((len(prepared), longest), dtype=torch.long)
    for row, item in enumerate(prepared):
        input_ids[row, pads[row]:] = item.input_ids[0]
        attention_mask[row, pads[row]:] = 1
    extra = {name: torch.cat([p.model_inputs[name] for p in prepared]) for name in prepared[0].model_inputs}
    forward = forward_inputs(loaded, input_ids, extra)
    rows = RowRecorders(layout, recorders, pads)
    vocab = loaded.text_config.vocab_size
    keep_all = [n * vocab <= MAX_PROMPT_LOGITS for n in lengths]  # the single-input rule, row by row
    generated = REGIONS.index("generated")
    with torch.inference_mode(), capturing(loaded.model, rows):
        rows.begin_step(0, longest, list(range(len(prepared))))
        decoder = PaddedDecoder(loaded.model, pad_token_id(loaded))
        with heap.long_input(input_ids.numel()):
            output = decoder.start(forward, attention_mask, all_logits=any(keep_all))
        for row, item in enumerate(prepared):
            logits = output.logits[row, pads[row]:] if keep_all[row] else output.logits[row, -1:]
            predictions[row].record_rows(logits, item.input_ids[0], lengths[row])
        feeds = [0]

        def on_token(row: int, step: int, token_id: int, logits: torch.Tensor) -> None:
            position = lengths[row] + step
            predictions[row].record_token(position, token_id, logits)
            tokens[row].append(Token(position, token_id, loaded.tokenizer.decode([token_id]), "generated"))
            recorders[row].set_regions("text", torch.tensor([generated]), start=position)

        def feed(fed: dict[int, int]) -> torch.Tensor:
            step = feeds[0]
            feeds[0] += 1
            if progress:
                progress(step + 1, max_new_tokens + 1)
            rows.begin_step(longest + step, 1, sorted(fed))
            logits = decoder.feed(fed)
            for row in fed:
                predictions[row].record_row_entropy(recorders[row].step_start, logits[row])
            return logits

        greedy_rows(output.logits[:, -1], feed, max_new_tokens=max_new_tokens, eos=eos, feed_last=True,
                    on_token=on_token)
    if progress:
        progress(max_new_tokens + 1, max_new_tokens + 1)
    captured = []
    for row, recorder in enumerate(recorders):
        tensors = recorder.tensors()
        tensors.update(predictions[row].tensors(len(tokens[row])))
        captured.append(Captured(tokens[row], tensors, recorder, layout, IMPLEMENTATION_NAME))
    return captured
