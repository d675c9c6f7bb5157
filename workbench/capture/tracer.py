"""`trace()`: run a model on one input (plus greedy generation) with capture on, and return a `Trace`."""

from __future__ import annotations

from typing import Callable

import torch

from workbench.capture.backend import capturing
from workbench.capture.inputs import prepare_input
from workbench.capture.interventions import intervening
from workbench.capture.layout import discover_layout
from workbench.capture.preflight import capture_plan, check_lengths
from workbench.capture.recorder import Recorder
from workbench.capture.trace_meta import eos_ids, record_predictions, trace_meta
from workbench.errors import InputError
from workbench.models.loaded import LoadedModel
from workbench.traces.tokens import REGIONS, Token
from workbench.traces.trace import MemoryTensors, Trace

# Above this many prompt logits (positions x vocabulary) only the last prompt row's prediction is kept.
MAX_PROMPT_LOGITS = 64 * 1024 * 1024


def trace(model, prompt: str, image=None, *, max_new_tokens: int = 0, system: str | None = None, raw: bool = False,
          maps=None, vision_maps=None, hidden_states: bool = False, head_outputs=None, top_k: int = 0,
          map_dtype: str = "float16", max_length: int | None = None, implementation: str = "auto",
          decomposition: bool = False, intervention=None, max_map_memory=None,
          device: str = "cpu", dtype: str = "float32", progress: Callable[[int, int], None] | None = None) -> Trace:
    """Trace `prompt` (and `image`) through `model` and greedily generate up to `max_new_tokens` tokens.

    model: a registry name, local directory, hub id, or a `LoadedModel`.
    maps / vision_maps: keep full maps for 'LAYERS:HEADS' (e.g. 'all', '0-3:all', '5:0,2') of the language model
        / vision tower; statistics are always kept.
    hidden_states: keep the residual stream entering each layer. head_outputs: keep per-head contributions
        (through W_O) at "all", "generated", "last" or explicit positions. top_k: keep top-k keys per row.
    max_length: allow sequences up to this length even past the model's trained context.
    decomposition: keep per-layer queries, keys, values, attention outputs and W_O (see
        workbench/capture/decomposition.py) for routes and circuit tracing; implies hidden_states.
    intervention: an attention intervention applied while tracing (`workbench.capture.interventions`: ACT, VAR);
        its spec and what it moved go to meta["capture"]["intervention"]. Off by default.
    max_map_memory: budget for full maps ("2GB", bytes, "unlimited"); default WORKBENCH_MAX_MAP_MEMORY or half the
        available RAM. Maps estimated above it raise ResourceError before any forward (workbench/capture/memory.py).
    progress: called as progress(done_forwards, total_forwards).

    >>> import workbench
    >>> t = workbench.trace("tiny-llama", "Hello there", max_new_tokens=2)
    >>> [token.region for token in t.tokens][-2:]
    ['generated', 'generated']
    """
    from workbench.models import load_model

    loaded = model if isinstance(model, LoadedModel) else load_model(model, device=device, dtype=dtype)
    if decomposition and loaded.kind == "encoder":
        raise InputError(f"{loaded.name} is a post-norm encoder; the residual decomposition (routes, circuits) "
                         "supports pre-norm decoders (GPT-2, Llama, Mistral, Qwen2, LLaVA): drop --decomposition")
    prepared = prepare_input(loaded, prompt, image, system=system, raw=raw)
    prompt_length = prepared.input_ids.shape[1]
    check_lengths(loaded, prompt_length, max_new_tokens, max_length)
    layout = discover_layout(loaded.model)
    plan = capture_plan(loaded, layout, positions=prompt_length + max_new_tokens, maps=maps, vision_maps=vision_maps,
                        hidden_states=hidden_states, head_outputs=head_outputs, top_k=top_k, map_dtype=map_dtype,
                        decomposition=decomposition, implementation=implementation, max_map_memory=max_map_memory)
    recorder = Recorder(layout, plan, text_capacity=prompt_length + max_new_tokens, prompt_length=prompt_length)
    recorder.set_regions("text", torch.tensor([REGIONS.index(t.region) for t in prepared.tokens]))
    tokens = list(prepared.tokens)
    logprob = torch.full((prompt_length + max_new_tokens,), float("nan"))
    entropy = torch.full_like(logprob, float("nan"))
    device_ = loaded.model.device if hasattr(loaded.model, "device") else "cpu"
    eos = eos_ids(loaded)
    runtime = intervention.start(layout, image_positions=[t.i for t in prepared.tokens if t.region == "image"]) \
        if intervention is not None else None
    with torch.inference_mode(), capturing(loaded.model, recorder), intervening(loaded.model, runtime):
        recorder.begin_step(0, prompt_length)
        forward = {"input_ids": prepared.input_ids.to(device_),
                   **{k: (v.to(device_) if torch.is_tensor(v) else v) for k, v in prepared.model_inputs.items()}}
        if "pixel_values" in forward:
            forward["pixel_values"] = forward["pixel_values"].to(loaded.model.dtype)
        if loaded.kind == "encoder":
            loaded.model(**forward)
        else:
            keep_all = prompt_length * loaded.text_config.vocab_size <= MAX_PROMPT_LOGITS
            output = loaded.model(**forward, use_cache=True, logits_to_keep=0 if keep_all else 1)
            record_predictions(output.logits[0], prepared.input_ids[0], prompt_length, logprob, entropy)
            cache = output.cache
            for step in range(max_new_tokens):
                if progress:
                    progress(step + 1, max_new_tokens + 1)
                next_id = int(output.logits[0, -1].argmax())
                position = prompt_length + step
                logprob[position - 1] = torch.log_softmax(output.logits[0, -1].float(), -1)[next_id]
                tokens.append(Token(position, next_id, loaded.tokenizer.decode([next_id]), "generated"))
                recorder.set_regions("text", torch.tensor([REGIONS.index("generated")]), start=position)
                recorder.begin_step(position, 1)
                output = loaded.model(input_ids=torch.tensor([[next_id]], device=device_), cache=cache,
                                      use_cache=True)
                cache = output.cache
                entropy[position] = _entropy(output.logits[0, -1])
                if next_id in eos:
                    break
    if progress:
        progress(max_new_tokens + 1, max_new_tokens + 1)
    n = len(tokens)
    tensors = recorder.tensors()
    if not any(name.endswith(".key_mass") for name in tensors):
        raise InputError(f"no attention call of {loaded.name} went through the workbench implementation (was the "
                         "model rewired, e.g. by a TransformerLens bridge, or is its attention not pluggable?); "
                         "load a fresh copy of the model")
    tensors["outputs.next_token_logprob"] = (logprob[:n].clone(), ("query_pos",))
    tensors["outputs.prediction_entropy"] = (entropy[:n].clone(), ("query_pos",))
    tensors.update(prepared.image_tensors())
    meta = trace_meta(loaded, prepared, tokens, prompt_length, max_new_tokens, layout, plan, recorder)
    if runtime is not None:
        meta["capture"]["intervention"] = {**intervention.to_json(), "report": runtime.report()}
    return Trace(meta=meta, tokens=tokens, tensors=MemoryTensors(tensors))


def _entropy(logits: torch.Tensor) -> float:
    logp = torch.log_softmax(logits.float(), -1)
    return float(-(logp.exp() * logp).sum())
