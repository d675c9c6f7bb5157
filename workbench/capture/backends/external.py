"""Backends whose model runs another library's way (nnsight, TransformerLens), replayed into the workbench recorder.

Such a library runs the model and hands over, per attention layer, what the workbench attention implementation
would have seen: post-RoPE queries and keys, the mask, the scaling, and on request the per-head outputs (before
W_O) and the residual stream entering the layer. They are replayed into the very `Recorder` and kernels of HF
capture, so every backend shares one statistics code path and one bundle format.

Generation is greedy (`generation.greedy`) with one full forward per new token through the library (no KV
cache); the statistics then come from one captured forward over the final sequence. With causal attention that
equals HF capture's incremental statistics (the recorder's KV-cache accumulation yields the same rows and column
sums).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Protocol

import torch

from workbench.capture.backends.captured import Captured
from workbench.capture.generation import greedy
from workbench.capture.kernel_choice import choose
from workbench.capture.layout import discover_layout
from workbench.capture.predictions import Predictions
from workbench.capture.recorder import Recorder
from workbench.errors import InputError
from workbench.models.loaded import LoadedModel
from workbench.traces.tokens import REGIONS, Token


@dataclass
class AttentionCall:
    """One attention call as a library saw it (batch of one)."""

    stack: str  # "text" | "vision"
    layer: int
    query: torch.Tensor  # [1, head, query_pos, d_head], post-RoPE
    key: torch.Tensor  # [1, kv_head, key_pos, d_head], post-RoPE, GQA not expanded
    scaling: float
    causal: bool
    attention_mask: torch.Tensor | None = None  # what SDPA would get: bool (True = visible) or additive float
    attn_output: torch.Tensor | None = None  # [1, query_pos, head, d_head], before W_O (head outputs)
    hidden_in: torch.Tensor | None = None  # [1, query_pos, d_model], residual stream entering the layer


@dataclass
class Capture:
    """What one captured forward over the final sequence yields."""

    calls: list[AttentionCall]
    logits: torch.Tensor | None  # [query_pos, vocab] (None for encoders)
    extra_meta: dict = field(default_factory=dict)


class Library(Protocol):
    """What `ExternalBackend` needs from a library's driver (nnsight.py, lens.py)."""

    name: str  # "nnsight" | "transformer_lens"
    version: str
    loaded: LoadedModel  # the HF module underneath, its tokenizer/processor and kind (for regions and layout)

    def next_token_logits(self, input_ids: torch.Tensor, model_inputs: dict) -> torch.Tensor:
        """[vocab] logits of the last position of one forward over input_ids [1, query_pos]."""

    def capture(self, input_ids: torch.Tensor, model_inputs: dict, *, hidden_states: bool,
                head_outputs: bool) -> Capture:
        """One forward over input_ids [1, query_pos] returning every attention call."""


class ReplayRecorder(Recorder):
    """The HF-capture Recorder, plus the one entry the forward hooks would otherwise fill: hidden states."""

    def record_hidden(self, layer: int, hidden: torch.Tensor) -> None:
        buffer = self._layer_buffers("text", layer)
        buffer["hidden_in"][: hidden.shape[1]] = hidden[0].detach().float().cpu()


class ExternalBackend:
    """A Tracer backend over a library driver: greedy generation through it, then one captured forward."""

    def __init__(self, library: Library):
        self.library = library
        self.name = library.name
        self.loaded = library.loaded
        self.accepts_images = getattr(library, "accepts_images", True)
        layout = discover_layout(self.loaded.model)
        projection = getattr(library, "output_projection", None)  # a bridge renames the HF output projections
        self.layout = dataclasses.replace(layout, projection=projection) if projection is not None else layout

    def hf_model(self):
        raise InputError(f"generation without capture, interventions and replay run on the HF backend; the "
                         f"{self.name} backend traces: open the model with backend='hf'")

    def capture(self, prepared, plan, *, max_new_tokens: int, eos: set[int], edit=None, progress=None) -> Captured:
        library, loaded = self.library, self.loaded
        if plan.decomposition or edit is not None:
            raise InputError(f"--decomposition and interventions need HF capture; the {library.name} backend "
                             "records statistics, maps, hidden states and head outputs: use --backend hf")
        tokens = list(prepared.tokens)
        prompt_length = prepared.input_ids.shape[1]

        def token_ids() -> torch.Tensor:
            return torch.tensor([[token.id for token in tokens]], dtype=prepared.input_ids.dtype)

        def on_token(step: int, token_id: int, _logits) -> None:
            if progress:
                progress(step + 1, max_new_tokens + 1)
            tokens.append(Token(len(tokens), token_id, loaded.tokenizer.decode([token_id]), "generated"))

        with torch.inference_mode():
            if max_new_tokens:  # on_token has appended the new token when feed runs
                greedy(library.next_token_logits(token_ids(), prepared.model_inputs),
                       lambda _: library.next_token_logits(token_ids(), prepared.model_inputs),
                       max_new_tokens=max_new_tokens, eos=eos, on_token=on_token)
            ids = token_ids()
            captured = library.capture(ids, prepared.model_inputs, hidden_states=plan.hidden_states,
                                       head_outputs=plan.head_outputs is not None)
        if progress:
            progress(max_new_tokens + 1, max_new_tokens + 1)
        n = len(tokens)
        recorder = ReplayRecorder(self.layout, plan, text_capacity=n, prompt_length=prompt_length)
        recorder.set_regions("text", torch.tensor([REGIONS.index(t.region) for t in tokens]))
        recorder.begin_step(0, n)
        _replay(recorder, self.layout, captured.calls, hidden_states=plan.hidden_states, kernel=plan.kernel)
        tensors = recorder.tensors()
        predictions = Predictions(n)
        if captured.logits is not None:
            predictions.record_rows(captured.logits.float().cpu(), ids[0], n)
        tensors.update(predictions.tensors(n))
        frontend = {"name": library.name, "version": library.version, **captured.extra_meta}
        return Captured(tokens, tensors, recorder, self.layout, library.name, frontend)


def _replay(recorder: ReplayRecorder, layout, calls: list[AttentionCall], *, hidden_states: bool,
            kernel: str) -> None:
    seen = set()
    for call in calls:
        stack = layout.stacks.get(call.stack)
        if stack is None or not 0 <= call.layer < stack.n_layers:
            raise RuntimeError(f"the backend reported an attention call of {call.stack} layer {call.layer}, "
                               "which the model's layout does not have")
        seen.add((call.stack, call.layer))
        # The layer module itself locates to (stack, layer) in the layout, whichever module the library ran.
        query, key = call.query.float(), call.key.float()
        chosen = choose(kernel, query, key, key, mask=None, wants_maps=False, top_k=recorder.plan.top_k,
                        editing=False, dropout=0.0).implementation  # the output exists already: a two-pass kernel
        located = recorder.locate_call(stack.layers[call.layer], query, key)
        recorder.on_attention(located, query=query, key=key, attention_mask=call.attention_mask,
                              scaling=float(call.scaling), causal=call.causal, attn_output=call.attn_output,
                              kernel=chosen)
        if hidden_states and call.stack == "text" and call.hidden_in is not None:
            recorder.record_hidden(call.layer, call.hidden_in)
    missing = [layer for layer in range(layout.stacks["text"].n_layers) if ("text", layer) not in seen]
    if missing:
        raise RuntimeError(f"the backend captured no attention for text layers {missing}")


def hf_view(module, tokenizer, processor=None, *, name: str | None = None, source: str | None = None) -> LoadedModel:
    """A `LoadedModel` around an HF module that a library owns (for regions, layout and metadata)."""
    from workbench.models.loading import model_kind

    if tokenizer is None:
        raise InputError("the wrapped model has no tokenizer; pass tokenizer=... (and processor=... for a "
                         "vision-language model) so the workbench can label token regions")
    config = module.config
    label = name or getattr(config, "name_or_path", None) or type(module).__name__
    return LoadedModel(label, module.eval(), tokenizer, model_kind(config), source or label, processor=processor)
