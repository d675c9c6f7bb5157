"""The nnsight backend: trace a model wrapped by nnsight (`NNsight`, `LanguageModel`, `VisionLanguageModel`,
`TransformersModel`) into the same `Trace` as HF capture, locally or on NDIF (`remote=True`).

Inside one `model.trace(...)` block it reads, for every attention layer, the inputs of the attention-interface
call in the module's source (`<attn>.source.attention_interface_1.inputs`: post-RoPE q and k, the mask, the
scaling), and on request the call's output (per-head outputs before W_O) and each layer's input (residual
stream). Only these O(n d) tensors are saved (downloaded, when remote); the statistics are computed here by the
workbench Recorder and kernels. Layers are read in execution order (vision tower first), as nnsight requires.

Remote runs need an NDIF API key (NDIF_API_KEY) and a reachable NDIF host; both are checked before anything
is loaded, and a missing one fails at once with a WorkbenchError (no hang).
"""

from __future__ import annotations

import functools
import inspect
import os
import warnings

import torch

from workbench.errors import InputError
from workbench.capture.backends.external import AttentionCall, Capture, ExternalBackend, hf_view
from workbench.capture.backends.ndif import RemoteUnavailableError, ndif_preflight
from workbench.capture.generation import forward_inputs


@functools.cache
def _calls_attention_interface(cls) -> bool:
    try:
        return "attention_interface(" in inspect.getsource(cls.forward)
    except (OSError, TypeError):
        return False


def attention_module(layer_module):
    """The submodule of a layer whose forward calls transformers' attention interface (self_attn, attn, ...)."""
    for _, module in layer_module.named_modules():
        if _calls_attention_interface(type(module)):
            return module
    raise InputError(f"{type(layer_module).__name__} does not call transformers' attention interface; the "
                     "nnsight backend needs a model whose attention goes through AttentionInterface")


def _call_name(envoy) -> str:
    """The source name of the attention-interface CALL (`attention_interface_0` is the lookup, not the call)."""
    names = [name for name in envoy.source.names if name.startswith("attention_interface_")]
    if len(names) < 2:
        raise InputError(f"cannot find the attention-interface call in {envoy.path}'s source")
    return max(names, key=lambda name: int(name.rsplit("_", 1)[1]))


class NNsightDriver:
    """Drive an nnsight-wrapped model for `ExternalBackend`."""

    name = "nnsight"

    def __init__(self, model, *, tokenizer=None, processor=None, name: str | None = None, remote: bool | str = False):
        import nnsight
        from nnsight import NNsight

        from workbench.capture.layout import discover_layout
        from workbench.models.loaded import LoadedModel

        self.version = nnsight.__version__ if hasattr(nnsight, "__version__") else _dist_version("nnsight")
        self.remote = remote
        if remote and remote != "local":
            ndif_preflight()
        if isinstance(model, str):
            model = _load_for_nnsight(model, remote=remote)
        if isinstance(model, LoadedModel):
            self.loaded = model
            with warnings.catch_warnings():  # e.g. BERT's `output` submodules, served as `E_output`
                warnings.simplefilter("ignore")
                self.envoy = NNsight(model.model)
        else:
            self.envoy = model
            if not remote and hasattr(model, "dispatched") and not model.dispatched:
                model.dispatch()  # real weights now, so the layout below names the modules that will run
            self.loaded = hf_view(model._module, tokenizer or getattr(model, "tokenizer", None),
                                  processor or getattr(model, "processor", None), name=name)
        if remote and not hasattr(self.envoy, "to_model_key"):
            raise RemoteUnavailableError("--remote needs a hub model wrapped by nnsight's LanguageModel / "
                                         "TransformersModel (NDIF runs models by hub id), not a local module")
        layout = discover_layout(self.loaded.model)
        if "cross" in layout.stacks:  # its layers interleave with the text's, and its tower runs two encoders
            from workbench.errors import InputError

            raise InputError(f"{self.loaded.name} has cross-attention layers (Mllama), which the nnsight backend does "
                             "not capture; use --backend hf")
        order = [name for name in ("vision", "text") if name in layout.stacks]  # execution order
        self.targets = []
        for stack_name in order:
            for index, layer in enumerate(layout.stacks[stack_name].layers):
                attn = attention_module(layer)
                attn_envoy = self._envoy_of(attn)
                self.targets.append((stack_name, index, self._envoy_of(layer), attn_envoy, _call_name(attn_envoy),
                                     bool(getattr(attn, "is_causal", stack_name == "text"))))

    def _envoy_of(self, module):
        envoy = self.envoy.interleaver.envoys.get(id(module))
        if envoy is None:
            raise RuntimeError(f"nnsight has no envoy for {type(module).__name__}")
        return envoy

    def _forward_kwargs(self, input_ids, model_inputs) -> dict:
        if self.remote:  # NDIF places and casts the inputs itself
            return {"input_ids": input_ids, **model_inputs}
        return forward_inputs(self.loaded, input_ids, model_inputs)

    def _trace(self, kwargs):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            if self.remote:
                return self.envoy.trace(remote=self.remote, **kwargs)
            return self.envoy.trace(**kwargs)

    def next_token_logits(self, input_ids, model_inputs) -> torch.Tensor:
        envoy = self.envoy
        with self._trace(self._forward_kwargs(input_ids, model_inputs)):
            logits = envoy.output.logits[0, -1].save()
        return logits.float().cpu()

    def capture(self, input_ids, model_inputs, *, hidden_states: bool, head_outputs: bool) -> Capture:
        import nnsight

        if head_outputs and self.remote:
            raise InputError("--head-outputs needs W_O, which stays on NDIF with --remote; drop one of the two")
        envoy, targets = self.envoy, self.targets
        want_logits = self.loaded.kind != "encoder"
        logits = None  # only saved values come back out of the block
        with self._trace(self._forward_kwargs(input_ids, model_inputs)):
            saved = nnsight.save([])
            for stack, index, layer_envoy, attn_envoy, call_name, module_causal in targets:
                hidden = layer_envoy.input if hidden_states and stack == "text" else None
                call = getattr(attn_envoy.source, call_name)
                args, kwargs = call.inputs
                output = call.output[0] if head_outputs and stack == "text" else None
                saved.append([hidden, args[1], args[2], args[4], kwargs.get("scaling"), kwargs.get("is_causal"),
                              output])
            if want_logits:
                logits = envoy.output.logits[0].save()
        calls = []
        for (stack, index, _, _, _, module_causal), values in zip(targets, saved):
            hidden, query, key, mask, scaling, is_causal, output = values
            calls.append(AttentionCall(
                stack=stack, layer=index, query=query.detach().cpu(), key=key.detach().cpu(),
                scaling=scaling if scaling is not None else query.shape[-1] ** -0.5,
                causal=bool(is_causal) if is_causal is not None else module_causal,
                attention_mask=mask.detach().cpu() if torch.is_tensor(mask) else None,
                attn_output=output.detach().cpu() if torch.is_tensor(output) else None,
                hidden_in=hidden.detach().cpu() if torch.is_tensor(hidden) else None,
            ))
        extra = {"remote": self.remote if isinstance(self.remote, str) else bool(self.remote),
                 "wrapper": type(envoy).__name__}
        return Capture(calls, logits.detach().cpu() if torch.is_tensor(logits) else None, extra)


def _dist_version(name: str) -> str:
    from importlib.metadata import version

    return version(name)


def _load_for_nnsight(name: str, *, remote):
    """A registry name / local dir / hub id -> what NNsightFrontend wraps (a LoadedModel locally, a meta
    LanguageModel for NDIF, which runs models by hub id)."""
    from workbench.models import REGISTRY, load_model

    if not remote:
        return load_model(name)
    spec = REGISTRY.get(name)
    hub_id = spec.hub_id if spec is not None else name
    if hub_id is None or "/" not in hub_id or os.path.isdir(os.path.expanduser(name)):
        raise RemoteUnavailableError(f"{name!r} exists only on this machine; NDIF runs hub models: pass a hub id "
                                     "(e.g. meta-llama/Llama-3.1-8B) with --remote, or drop --remote")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from nnsight import LanguageModel

        try:
            return LanguageModel(hub_id)
        except OSError as error:
            raise RemoteUnavailableError(f"cannot read the config and tokenizer of {hub_id} (needed locally to label "
                                         f"tokens): {str(error).splitlines()[0]}") from None


def NNsightBackend(model, *, remote: bool | str = False, tokenizer=None, processor=None) -> ExternalBackend:
    """The Tracer backend for an nnsight-wrapped model, a LoadedModel, or (remote) a hub id run on NDIF.

    remote: True runs on NDIF (needs NDIF_API_KEY and network; fails at once otherwise); "local" runs nnsight's
        local simulation of the remote path (serialise, deserialise, run here).
    """
    return ExternalBackend(NNsightDriver(model, tokenizer=tokenizer, processor=processor, remote=remote))
