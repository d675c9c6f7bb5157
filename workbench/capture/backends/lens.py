"""The TransformerLens 4.x backend: trace a `TransformerBridge` into the same `Trace` as HF capture.

One `bridge.run_with_cache` over the final sequence, filtered to the hook points the statistics need:
`blocks.L.attn.hook_rot_q` / `hook_rot_k` (post-RoPE; `hook_q` / `hook_k` for models without rotary
embeddings), and on request `hook_z` (per-head outputs before W_O) and `blocks.L.hook_resid_pre` (residual
stream). Only O(n d) tensors are cached, never `hook_pattern`; the statistics come from the workbench
Recorder and kernels. The bridge's own `hook_pattern` is what the tests check the result against.

A registry name, local directory or `LoadedModel` is wrapped with `TransformerBridge.boot_transformers(...,
hf_model=...)`; the tokenizer is saved to and reloaded from a folder first, as the bridge expects.
"""

from __future__ import annotations

import tempfile
import warnings

import torch

from workbench.capture.backends.external import AttentionCall, Capture, ExternalBackend, hf_view
from workbench.capture.generation import model_device
from workbench.errors import InputError


def boot_bridge(loaded):
    """Wrap a `LoadedModel` in a TransformerBridge (the bridge switches the HF module to eager attention)."""
    from transformers import AutoTokenizer

    if loaded.kind == "encoder":
        raise InputError(f"{loaded.name} is an encoder without a language-model head, which TransformerLens' "
                         "bridge cannot wrap; use --backend hf or nnsight")
    if loaded.kind == "vlm":
        raise InputError(f"{loaded.name} is a vision-language model; the TransformerLens backend traces text "
                         "models only, use --backend hf or nnsight")
    config = loaded.model.config
    if not getattr(config, "architectures", None):  # models built from a config carry no architecture name
        config.architectures = [type(loaded.model).__name__]
    # The bridge reloads the tokenizer from its name_or_path while booting: the folder must outlive the boot.
    with tempfile.TemporaryDirectory(prefix="workbench-tokenizer-") as folder, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from transformer_lens.model_bridge import TransformerBridge

        loaded.tokenizer.save_pretrained(folder)
        tokenizer = AutoTokenizer.from_pretrained(folder)
        return TransformerBridge.boot_transformers(loaded.name, hf_model=loaded.model, tokenizer=tokenizer,
                                                   device=str(model_device(loaded.model)))


class LensDriver:
    """Drive a TransformerBridge for `ExternalBackend`."""

    name = "transformer_lens"
    accepts_images = False

    def __init__(self, model, *, name: str | None = None, copy_model: bool = True):
        """model: a TransformerBridge, a LoadedModel or a registry name / local dir / hub id.

        Booting a bridge rewires the HF module it wraps in place (its blocks become bridge components that no
        longer call transformers' attention interface), so a LoadedModel is deep-copied first unless
        copy_model=False says the caller hands it over for good.
        """
        import copy
        import dataclasses
        from importlib.metadata import version

        from workbench.models.loaded import LoadedModel

        self.version = version("transformer-lens")
        if isinstance(model, str):
            from workbench.models import load_model

            model, copy_model = load_model(model), False
        if isinstance(model, LoadedModel):
            if copy_model:
                model = dataclasses.replace(model, model=copy.deepcopy(model.model))
            self.loaded, self.bridge = model, boot_bridge(model)
        else:
            self.bridge = model
            hf_model = getattr(model, "original_model", None)
            if hf_model is None:
                raise InputError("the TransformerLens backend needs a TransformerBridge (TransformerLens 4.x) "
                                 "built from a transformers model, e.g. TransformerBridge.boot_transformers(dir)")
            self.loaded = hf_view(hf_model, model.tokenizer, getattr(model, "processor", None),
                                  name=name or getattr(model.cfg, "model_name", None))
        if self.loaded.kind != "causal":
            raise InputError(f"{self.loaded.name} is not a causal language model; the TransformerLens backend "
                             "traces causal LMs, use --backend hf or nnsight")
        self.n_layers = self.bridge.cfg.n_layers
        names = set(self.bridge.hook_dict)
        rotary = "blocks.0.attn.hook_rot_q" in names
        self.q_hook, self.k_hook = ("hook_rot_q", "hook_rot_k") if rotary else ("hook_q", "hook_k")
        missing = [hook for hook in (self.q_hook, self.k_hook, "hook_z") if f"blocks.0.attn.{hook}" not in names]
        if missing:
            raise InputError(f"this bridge has no attention hook points {missing}; the TransformerLens backend "
                             "needs q/k hooks on every block")

    def output_projection(self, stack: str, layer: int) -> torch.Tensor:
        """W_O of a layer as [d_model, head * d_head], read from the bridge's `blocks.L.attn.o` component."""
        projection = self.bridge.blocks[layer].attn.o
        projection = getattr(projection, "_original_component", projection)
        return projection.weight.T if type(projection).__name__ == "Conv1D" else projection.weight

    def _ids(self, input_ids, model_inputs):
        if model_inputs:
            raise InputError("the TransformerLens backend takes token ids only (no images or extra inputs)")
        return input_ids.to(model_device(self.loaded.model))

    def next_token_logits(self, input_ids, model_inputs) -> torch.Tensor:
        logits = self.bridge(self._ids(input_ids, model_inputs), return_type="logits")
        return logits[0, -1].float().cpu()

    def capture(self, input_ids, model_inputs, *, hidden_states: bool, head_outputs: bool) -> Capture:
        wanted = {self.q_hook, self.k_hook} | ({"hook_z"} if head_outputs else set())

        def keep(name: str) -> bool:
            parts = name.split(".")
            if len(parts) == 4 and parts[0] == "blocks" and parts[2] == "attn":
                return parts[3] in wanted
            return hidden_states and len(parts) == 3 and parts[0] == "blocks" and parts[2] == "hook_resid_pre"

        logits, cache = self.bridge.run_with_cache(self._ids(input_ids, model_inputs), names_filter=keep,
                                                   return_type="logits")
        from workbench.capture.layout import discover_layout
        from workbench.capture.backends.nnsight import attention_module

        layout = discover_layout(self.loaded.model)
        calls = []
        for layer in range(self.n_layers):
            query = cache[f"blocks.{layer}.attn.{self.q_hook}"]  # [1, query_pos, head, d_head]
            key = cache[f"blocks.{layer}.attn.{self.k_hook}"]  # [1, key_pos, kv_head, d_head]
            hf_attention = attention_module(layout.stacks["text"].layers[layer])
            scaling = getattr(hf_attention, "scaling", None)
            calls.append(AttentionCall(
                stack="text", layer=layer,
                query=query.transpose(1, 2).detach().cpu(), key=key.transpose(1, 2).detach().cpu(),
                scaling=scaling if scaling is not None else query.shape[-1] ** -0.5,
                causal=bool(getattr(hf_attention, "is_causal", True)),
                attn_output=cache[f"blocks.{layer}.attn.hook_z"].detach().cpu() if head_outputs else None,
                hidden_in=cache[f"blocks.{layer}.hook_resid_pre"].detach().cpu() if hidden_states else None,
            ))
        extra = {"q_hook": self.q_hook, "k_hook": self.k_hook}
        return Capture(calls, logits[0].detach().float().cpu(), extra)


def LensBackend(model, *, copy_model: bool = True) -> ExternalBackend:
    """The Tracer backend for a TransformerBridge, or a LoadedModel wrapped in one (copied unless copy_model=False:
    booting a bridge rewires the HF module in place). Text models only."""
    return ExternalBackend(LensDriver(model, copy_model=copy_model))
