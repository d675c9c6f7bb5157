"""Build a `Trace` from attention calls that another front-end (nnsight, TransformerLens) captured.

A front-end runs the model its own way and hands over, per attention layer, what the workbench attention
backend would have seen: post-RoPE queries and keys, the mask, the scaling, and on request the per-head
outputs (before W_O) and the residual stream entering the layer. They are replayed into the very `Recorder`
and kernels of HF capture, so every backend shares one statistics code path and one bundle format.

Generation is greedy through the front-end (one full forward per new token, no KV cache); the statistics then
come from one captured forward over the final sequence. With causal attention that equals HF capture's
incremental statistics (the Recorder's KV-cache accumulation yields the same rows and column sums).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

import torch

from workbench.capture.layout import ModelLayout
from workbench.capture.recorder import Recorder
from workbench.errors import InputError
from workbench.models.loaded import LoadedModel
from workbench.traces.tokens import REGIONS, Token
from workbench.traces.trace import MemoryTensors, Trace


@dataclass
class AttentionCall:
    """One attention call as a front-end saw it (batch of one)."""

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


class Frontend(Protocol):
    """What `trace_frontend` needs from a front-end."""

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


class _ProjectedLayout(ModelLayout):
    """A layout whose W_O comes from the front-end (a TransformerBridge renames the HF output projections)."""

    def __init__(self, base: ModelLayout, projection: Callable[[str, int], torch.Tensor]):
        super().__init__(base.stacks, base._module_names)
        self._projection = projection

    def output_projection(self, stack: str, layer: int) -> torch.Tensor:
        return self._projection(stack, layer)


def trace_frontend(frontend: Frontend, prompt: str, image=None, *, max_new_tokens: int = 0, system: str | None = None,
                   raw: bool = False, maps=None, vision_maps=None, hidden_states: bool = False, head_outputs=None,
                   top_k: int = 0, map_dtype: str = "float16", max_length: int | None = None,
                   implementation: str = "auto", decomposition: bool = False, intervention=None,
                   max_map_memory=None, progress: Callable[[int, int], None] | None = None) -> Trace:
    """Trace `prompt` (and `image`) through a front-end into the same `Trace` that `workbench.trace` returns.

    decomposition and interventions need the HF capture path (they hook the attention computation itself).
    """
    from workbench.capture.inputs import prepare_input
    from workbench.capture.layout import discover_layout
    from workbench.capture.preflight import capture_plan, check_lengths
    from workbench.capture.trace_meta import eos_ids, record_predictions, trace_meta

    if decomposition or intervention is not None:
        raise InputError(f"--decomposition and interventions need HF capture; the {frontend.name} front-end "
                         "records statistics, maps, hidden states and head outputs: use --backend hf")
    loaded = frontend.loaded
    prepared = prepare_input(loaded, prompt, image, system=system, raw=raw)
    prompt_length = prepared.input_ids.shape[1]
    check_lengths(loaded, prompt_length, max_new_tokens, max_length)
    plan = capture_plan(loaded, discover_layout(loaded.model), positions=prompt_length + max_new_tokens, maps=maps,
                        vision_maps=vision_maps, hidden_states=hidden_states, head_outputs=head_outputs, top_k=top_k,
                        map_dtype=map_dtype, implementation=implementation, max_map_memory=max_map_memory)
    tokens = list(prepared.tokens)
    ids = prepared.input_ids
    eos = eos_ids(loaded)
    with torch.inference_mode():
        for step in range(max_new_tokens):
            if progress:
                progress(step + 1, max_new_tokens + 1)
            next_id = int(frontend.next_token_logits(ids, prepared.model_inputs).argmax())
            tokens.append(Token(len(tokens), next_id, loaded.tokenizer.decode([next_id]), "generated"))
            ids = torch.cat([ids, torch.tensor([[next_id]], dtype=ids.dtype)], dim=1)
            if next_id in eos:
                break
        captured = frontend.capture(ids, prepared.model_inputs, hidden_states=hidden_states,
                                    head_outputs=head_outputs is not None)
    if progress:
        progress(max_new_tokens + 1, max_new_tokens + 1)
    n = len(tokens)
    layout = discover_layout(loaded.model)
    if hasattr(frontend, "output_projection"):
        layout = _ProjectedLayout(layout, frontend.output_projection)
    recorder = ReplayRecorder(layout, plan, text_capacity=n, prompt_length=prompt_length)
    recorder.set_regions("text", torch.tensor([REGIONS.index(t.region) for t in tokens]))
    recorder.begin_step(0, n)
    _replay(recorder, layout, captured.calls, hidden_states=hidden_states)
    tensors = recorder.tensors()
    logprob = torch.full((n,), float("nan"))
    entropy = torch.full((n,), float("nan"))
    if captured.logits is not None:
        record_predictions(captured.logits.float().cpu(), ids[0], n, logprob, entropy)
    tensors["outputs.next_token_logprob"] = (logprob, ("query_pos",))
    tensors["outputs.prediction_entropy"] = (entropy, ("query_pos",))
    tensors.update(prepared.image_tensors())
    meta = trace_meta(loaded, prepared, tokens, prompt_length, max_new_tokens, layout, plan, recorder)
    meta["model"]["attention_backend"] = frontend.name
    meta["model"]["frontend"] = {"name": frontend.name, "version": frontend.version, **captured.extra_meta}
    return Trace(meta=meta, tokens=tokens, tensors=MemoryTensors(tensors))


def _replay(recorder: ReplayRecorder, layout, calls: list[AttentionCall], *, hidden_states: bool) -> None:
    seen = set()
    for call in calls:
        stack = layout.stacks.get(call.stack)
        if stack is None or not 0 <= call.layer < stack.n_layers:
            raise RuntimeError(f"the front-end reported an attention call of {call.stack} layer {call.layer}, "
                               "which the model's layout does not have")
        seen.add((call.stack, call.layer))
        # The layer module itself locates to (stack, layer) in the layout, whichever module the front-end ran.
        recorder.on_attention(stack.layers[call.layer], query=call.query.float(), key=call.key.float(),
                              attention_mask=call.attention_mask, scaling=float(call.scaling), causal=call.causal,
                              attn_output=call.attn_output)
        if hidden_states and call.stack == "text" and call.hidden_in is not None:
            recorder.record_hidden(call.layer, call.hidden_in)
    missing = [layer for layer in range(layout.stacks["text"].n_layers) if ("text", layer) not in seen]
    if missing:
        raise RuntimeError(f"the front-end captured no attention for text layers {missing}")


def hf_view(module, tokenizer, processor=None, *, name: str | None = None, source: str | None = None) -> LoadedModel:
    """A `LoadedModel` around an HF module that a front-end owns (for regions, layout and metadata)."""
    from workbench.models.loading import _model_kind

    if tokenizer is None:
        raise InputError("the wrapped model has no tokenizer; pass tokenizer=... (and processor=... for a "
                         "vision-language model) so the workbench can label token regions")
    config = module.config
    label = name or getattr(config, "name_or_path", None) or type(module).__name__
    return LoadedModel(label, module.eval(), tokenizer, _model_kind(config), source or label, processor=processor)
