"""`Tracer`: the one object that runs a model for the workbench.

    >>> from workbench.capture import Tracer
    >>> tracer = Tracer.open("tiny-llama")                     # backend="hf" | "nnsight" | "lens"
    >>> t = tracer.trace("Hello there", max_new_tokens=2)       # a Trace: statistics of every layer
    >>> [token.region for token in t.tokens][-2:]
    ['generated', 'generated']
    >>> tracer.generate("Hello there", max_new_tokens=2).token_ids == [tok.id for tok in t.tokens[-2:]]
    True

`trace()` captures one input (and its greedy generation) into a `Trace`; `generate()` generates greedily
without capture (optionally with an attention edit: an intervention or an observer); `replay()` recomputes
what a stored bundle does not hold (full maps of a layer, one token's rows) with one forward over the
bundle's own tokens. Every greedy loop is `generation.greedy`; every forward goes through the backend.
`workbench.trace(...)` is the one-line convenience.
"""

from __future__ import annotations

import contextlib
import inspect
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from workbench.capture.backends import open_backend
from workbench.capture.generation import CachedDecoder, eos_ids, forward_inputs, greedy
from workbench.capture.inputs import prepare_input
from workbench.capture.plan import CapturePlan
from workbench.capture.preflight import check_intervention_length, check_lengths
from workbench.capture.trace_meta import trace_meta
from workbench.traces.trace import MemoryTensors, Trace

PLAN_OPTIONS = tuple(name for name in inspect.signature(CapturePlan.build).parameters if name != "device")


@dataclass
class Generation:
    """A greedy answer: its token ids and text, and the logits [vocab] at the prompt's last row."""

    token_ids: list[int]
    text: str
    first_logits: torch.Tensor


class Tracer:
    """A model opened for tracing through one backend ("hf", "nnsight", "lens")."""

    def __init__(self, backend):
        self._backend = backend
        self.loaded = backend.loaded
        self.backend = backend.name
        self.layout = backend.layout

    @classmethod
    def open(cls, model, *, backend: str = "hf", device: str = "cpu", dtype: str = "float32",
             remote: bool | str = False, rope_scaling: str | None = None, max_length: int | None = None,
             copy_model: bool = True, tokenizer=None, processor=None) -> "Tracer":
        """Open `model` (registry name, local directory, hub id, or a `LoadedModel`) for tracing.

        backend: "hf" (transformers' attention interface), "nnsight" (remote=True runs on NDIF) or "lens"
            (a TransformerLens bridge; it rewires the model, so a LoadedModel is copied unless copy_model=False).
        rope_scaling / max_length: run a RoPE model past its trained context (see `workbench.load_model`).
        tokenizer / processor: for a model wrapped by nnsight without them (token regions need the tokenizer).
        """
        return cls(open_backend(backend, model, device=device, dtype=dtype, remote=remote, copy_model=copy_model,
                                rope_scaling=rope_scaling, max_length=max_length, tokenizer=tokenizer,
                                processor=processor))

    def plan(self, **options) -> CapturePlan:
        """A CapturePlan from keyword options (see CapturePlan.build)."""
        return CapturePlan.build(device=self.loaded.device, **options)

    # -- capture ------------------------------------------------------------------------------------------------
    def trace(self, prompt: str, image=None, *, plan: CapturePlan | None = None, max_new_tokens: int = 0,
              system: str | None = None, raw: bool = False, max_length: int | None = None, intervention=None,
              progress: Callable[[int, int], None] | None = None, spans=None, continuation: Sequence[int] | None = None,
              **plan_options) -> Trace:
        """Trace `prompt` (and `image`) and greedily generate up to `max_new_tokens` tokens with capture on.

        plan: a CapturePlan, or its options as keywords (maps, vision_maps, hidden_states, head_outputs, top_k,
            decomposition, map_dtype, kernel, max_map_memory).
        intervention: an attention intervention (`workbench.interventions`: ACT, VAR) applied while tracing; its
            spec and what it moved go to meta["capture"]["intervention"].
        progress: called as progress(done_forwards, total_forwards).
        spans: user spans of the prompt (`workbench.capture.spans.CharSpan`s: name, character range) whose attention
            mass and key count per query row are stored like the regions' (span_mass, span_count; hf backend).
        continuation: generate these token ids (at most max_new_tokens) instead of the argmax, capturing the model's
            attention over them (hf backend): how a decoding intervention's tokens are traced
            (`workbench.analyses.recalibration.trace`).
        """
        from workbench.errors import InputError

        plan = self._plan(plan, plan_options)
        loaded = self.loaded
        if image is not None and not self._backend.accepts_images:
            raise InputError(f"the {self.backend} backend traces text models; use --backend hf or nnsight for images")
        if getattr(intervention, "decoding", False):  # AVC / DAMRO change the decoding loop, not attention
            raise InputError(f"{intervention.name} is a decoding intervention; trace it with "
                             "workbench.analyses.recalibration.trace (CLI: workbench trace --intervene)")
        if continuation is not None and (self.backend != "hf" or len(continuation) > max_new_tokens):
            raise InputError(f"a continuation of {len(continuation)} tokens needs the hf backend and max_new_tokens "
                             f">= its length (got {self.backend}, {max_new_tokens})")
        prepared = prepare_input(loaded, prompt, image, system=system, raw=raw)
        if spans:
            self._place_spans(prepared, prompt, spans)
        prompt_length = prepared.input_ids.shape[1]
        check_lengths(loaded, prompt_length, max_new_tokens, max_length)
        plan.check(loaded, self.layout, positions=prompt_length + max_new_tokens)
        runtime = None
        if intervention is not None:
            check_intervention_length(loaded, prompt_length + max_new_tokens)
            runtime = intervention.start(self.layout, image_positions=prepared.image_positions())
        forced = {"continuation": list(continuation)} if continuation is not None else {}
        captured = self._backend.capture(prepared, plan, max_new_tokens=max_new_tokens, eos=eos_ids(loaded),
                                         edit=runtime, progress=progress, **forced)
        trace = _as_trace(loaded, prepared, captured, plan, max_new_tokens)
        if runtime is not None:
            trace.meta["capture"]["intervention"] = {**intervention.to_json(), "report": runtime.report()}
        return trace

    def trace_batch(self, prompts: Sequence[str], images: Sequence | None = None, *, plan: CapturePlan | None = None,
                    max_new_tokens: int = 0, system: str | None = None, raw: bool = False,
                    max_length: int | None = None, progress: Callable[[int, int], None] | None = None,
                    **plan_options) -> list[Trace]:
        """`trace` of each prompt (with its image, if any), run together: one left-padded forward and one batched
        greedy generation in which each row stops on its own; every Trace equals that of its prompt traced alone
        up to fp32 rounding (`capture/backends/hf_batch.py`). Where the inputs cannot share a forward (another
        backend, an encoder, decomposition, inputs with and without images) they are traced one after another.
        """
        plan = self._plan(plan, plan_options)
        images = list(images) if images is not None else [None] * len(prompts)
        if len(images) != len(prompts):
            from workbench.errors import InputError

            raise InputError(f"{len(prompts)} prompts but {len(images)} images; give one image (or None) per prompt")
        if len(prompts) < 2 or self._backend.name != "hf" or (any(images) and not self._backend.accepts_images):
            return [self.trace(p, i, plan=plan, max_new_tokens=max_new_tokens, system=system, raw=raw,
                               max_length=max_length, progress=progress) for p, i in zip(prompts, images, strict=True)]
        from workbench.capture.backends.hf_batch import batchable, capture_batch, padded_groups

        loaded = self.loaded
        prepared = [prepare_input(loaded, p, i, system=system, raw=raw) for p, i in zip(prompts, images, strict=True)]
        for item in prepared:
            check_lengths(loaded, item.input_ids.shape[1], max_new_tokens, max_length)
        plan.check(loaded, self.layout, positions=max(p.input_ids.shape[1] for p in prepared) + max_new_tokens)
        if batchable(loaded, prepared, plan) is not None:
            return [self.trace(p, i, plan=plan, max_new_tokens=max_new_tokens, system=system, raw=raw,
                               max_length=max_length, progress=progress) for p, i in zip(prompts, images, strict=True)]
        traces = []
        for group in padded_groups([p.input_ids.shape[1] for p in prepared], loaded.text_config.vocab_size):
            chosen = [prepared[index] for index in group]
            captured = capture_batch(self._backend, chosen, plan, max_new_tokens=max_new_tokens, eos=eos_ids(loaded),
                                     progress=progress)
            traces += [_as_trace(loaded, item, row, plan, max_new_tokens) for item, row in zip(chosen, captured,
                                                                                                strict=True)]
        return traces

    def _place_spans(self, prepared, prompt: str, spans) -> None:
        from workbench.capture.spans import check_spans, locate_spans
        from workbench.errors import InputError

        if self.backend != "hf":
            raise InputError(f"spans are captured by the hf backend only, not {self.backend}; use --backend hf")
        placed = locate_spans(check_spans(list(spans), prompt), offsets=prepared.offsets, text=prepared.meta["text"],
                              prompt=prompt, n_positions=prepared.input_ids.shape[1])
        prepared.spans = placed
        prepared.meta["spans"] = placed.to_json()

    # -- generation without capture -------------------------------------------------------------------------
    def generate(self, prompt: str, image=None, *, max_new_tokens: int = 16, system: str | None = None,
                 raw: bool = False, continuation: Sequence[int] | None = None, edit=None) -> Generation:
        """Greedy generation with the KV cache and no statistics.

        edit: an object whose `apply(module, *, query, key, value, attention_mask, scaling, causal, output)` sees
            (and may change) every attention output (an intervention runtime, or an observer), or None.
        """
        from workbench.errors import InputError

        if self.loaded.kind in ("encoder", "vision"):
            raise InputError(f"{self.loaded.name} is an encoder and cannot generate")
        prepared = prepare_input(self.loaded, prompt, image, system=system, raw=raw)
        forward = forward_inputs(self.loaded, prepared.input_ids, prepared.model_inputs)
        with torch.inference_mode(), self.editing(edit):
            first, feed = self.decoder(forward)
            ids = greedy(first, feed, max_new_tokens=max_new_tokens, eos=eos_ids(self.loaded),
                         continuation=continuation)
        return Generation(ids, self.loaded.tokenizer.decode(ids), first.float().cpu())

    def decoder(self, forward: dict) -> tuple[torch.Tensor, Callable[[int], torch.Tensor]]:
        """(logits [vocab] of the prompt's last row, feed) for one KV-cached sequence over HF forward kwargs."""
        decoder = CachedDecoder(self._backend.hf_model())
        return decoder.start(forward).logits[0, -1], decoder.feed

    def editing(self, edit):
        """Context in which `edit` sees every attention output of the model (a no-op for None)."""
        from workbench.capture.attention import editing

        return editing(self._backend.hf_model(), edit)

    def last_logits(self, input_ids: torch.Tensor, *, edit=None) -> torch.Tensor:
        """Logits [batch, vocab] (fp32, CPU) of the last row of one forward over token ids [batch, query_pos]: no
        cache, no capture, `edit` seeing every attention output as in `editing` (ablation and patching runs)."""
        return self.logits(input_ids, edit=edit, last_only=True)[:, -1].float().cpu()

    def logits(self, input_ids: torch.Tensor, *, edit=None, gradients: bool = False,
               last_only: bool = False) -> torch.Tensor:
        """Logits [batch, query_pos, vocab] of one forward over token ids [batch, query_pos] (no cache, no capture),
        `edit` seeing every attention output as in `editing`. gradients=True keeps the autograd graph, so a caller
        can differentiate through the edit (head importance differentiates a head mask); else inference mode.
        last_only: the last row only ([batch, 1, vocab]; the unembedding of the other rows is skipped)."""
        model = self._backend.hf_model()
        mode = contextlib.nullcontext() if gradients else torch.inference_mode()
        keep = {"logits_to_keep": 1} if last_only else {}
        with mode, self.editing(edit):
            return model(input_ids=input_ids.to(self.loaded.device), use_cache=False, **keep).logits

    # -- stored bundles ---------------------------------------------------------------------------------------
    def replay(self, trace, *, layers: Sequence[int], stack: str = "text", heads: Sequence[int] | None = None,
               rows: slice | None = None, image=None, map_dtype: torch.dtype = torch.float32,
               intervention=None) -> dict:
        """Recompute attention of a stored bundle: {layer: ReplayedLayer} with maps of `heads` (all by
        default) for the query `rows` (all by default), from one forward over the bundle's tokens that stops
        after the last wanted layer. intervention: the one the bundle was traced under, if any (rebuild it with
        `workbench.interventions.recorded(trace.meta)`; a bundle that records one is refused without it).
        See `workbench.capture.replay`."""
        from workbench.capture.replay import replay_layers

        return replay_layers(self, trace, layers=layers, stack=stack, heads=heads, rows=rows, image=image,
                             map_dtype=map_dtype, intervention=intervention)

    def _plan(self, plan: CapturePlan | None, options: dict) -> CapturePlan:
        from workbench.errors import InputError

        unknown = sorted(set(options) - set(PLAN_OPTIONS))
        if unknown:
            raise InputError(f"unknown capture option(s) {', '.join(unknown)}; options: {', '.join(PLAN_OPTIONS)}")
        if plan is not None and options:
            raise InputError("pass either plan=CapturePlan(...) or capture options, not both")
        return plan if plan is not None else self.plan(**options)


def _as_trace(loaded, prepared, captured, plan: CapturePlan, max_new_tokens: int) -> Trace:
    """The Trace of one captured input: its tensors, the input image, and the manifest."""
    tensors = captured.tensors
    tensors.update(prepared.image_tensors())
    meta = trace_meta(loaded, prepared, captured.tokens, prepared.input_ids.shape[1], max_new_tokens, captured.layout,
                      plan, captured.recorder)
    meta["model"]["attention_backend"] = captured.attention_backend
    if captured.frontend is not None:
        meta["model"]["frontend"] = captured.frontend
    return Trace(meta=meta, tokens=captured.tokens, tensors=MemoryTensors(tensors))


def trace(model, prompt: str, image=None, *, max_new_tokens: int = 0, backend: str = "hf", device: str = "cpu",
          dtype: str = "float32", **options) -> Trace:
    """One-line convenience: `Tracer.open(model, backend=..., ...).trace(prompt, image, ...)`.

    The plan is built (and its model-independent values checked) before the model loads.

    >>> import workbench
    >>> t = workbench.trace("tiny-llama", "Hello there", max_new_tokens=2)
    >>> [token.region for token in t.tokens][-2:]
    ['generated', 'generated']
    """
    plan_options = {key: options.pop(key) for key in list(options) if key in PLAN_OPTIONS}
    plan = options.pop("plan", None) or CapturePlan.build(device=device, **plan_options)
    if isinstance(model, str):
        check_before_loading(plan, model)
    tracer = model if isinstance(model, Tracer) else Tracer.open(model, backend=backend, device=device, dtype=dtype)
    return tracer.trace(prompt, image, plan=plan, max_new_tokens=max_new_tokens, **options)


def check_before_loading(plan: CapturePlan, model: str) -> None:
    """Check `plan` against `model`'s layers and heads from its config alone, before any weights load (skipped
    where the config needs the weights first: the tiny fixtures, SmolLM2 before its first conversion; the
    plan is checked against the loaded model in any case)."""
    from workbench.capture.layout import stack_shapes
    from workbench.models.loading import read_config

    config = read_config(model)
    if config is not None:
        plan.check_stacks({name: shape[:2] for name, shape in stack_shapes(config).items()}, model)
