"""Attention maps a statistics-only bundle does not store, recomputed on demand from the model.

    >>> from workbench.app.data.recompute import layer_maps, token_rows
    >>> maps = layer_maps(trace, 5)              # [head, query_pos, key_pos] of layer 5 (fp32)
    >>> rows = token_rows(trace, position=40)    # [layer, head, key_pos]: where token 40 looks, every layer

Both run ONE forward over the bundle's own token ids (prompt + generated, plus the image for VLMs)
through the workbench capture backend: `layer_maps` stops right after the wanted layer, `token_rows`
keeps one query row per layer (O(layers x heads x n) memory). A single forward over the final sequence
gives the same attention as the traced generation with a KV cache. Each result carries how far its
statistics are from the ones stored in the bundle (`mismatch`): near 0 means the same model and input,
a large value means the weights (or the image) differ from what was traced.
"""

from __future__ import annotations

import dataclasses
import threading
from dataclasses import dataclass

import torch
from workbench.app.data.tensors import key_regions, stat

from workbench.errors import InputError, WorkbenchError
from workbench.traces.tokens import REGIONS

MAP_GROUP_BYTES = 256 * 1024 * 1024  # fp32 map memory per attention_statistics call


class _Stop(Exception):
    """Raised inside the forward once everything wanted is recorded (skips the remaining layers)."""


class ModelPool:
    """Models loaded by registry name (or directory), kept for reuse; one forward at a time per model."""

    def __init__(self, max_models: int = 2):
        self.max_models = max_models
        self._models: dict[str, tuple[object, threading.Lock]] = {}
        self._lock = threading.Lock()

    def get(self, name: str):
        """(LoadedModel, lock) for `name`; the lock serialises forwards (capture toggles the model's backend)."""
        from workbench.models import load_model

        with self._lock:
            if name in self._models:
                self._models[name] = self._models.pop(name)  # most recently used last
                return self._models[name]
            loaded = load_model(name)
            entry = (loaded, threading.Lock())
            self._models[name] = entry
            while len(self._models) > self.max_models:
                self._models.pop(next(iter(self._models)))
            return entry


_DEFAULT_POOL = ModelPool()


@dataclass
class RecomputedLayer:
    maps: torch.Tensor  # [len(heads), query_pos, key_pos]
    heads: list[int]
    mismatch: float  # max |key_mass - stored key_mass| / max(stored), over the recomputed heads


@dataclass
class TokenRows:
    rows: torch.Tensor  # [layer, head, key_pos]
    position: int
    mismatch: float  # max |entropy - stored entropy| over layers and heads, nats


class _Probe:
    """Duck-typed recorder for `capturing`: calls `handler` for the wanted layers of one stack, then stops."""

    def __init__(self, layout, stack: str, layers: set[int], handler):
        self.layout, self.stack, self.pending, self.handler = layout, stack, set(layers), handler

    def install_hooks(self) -> list:
        return []

    def attend_fused(self, *_, **__) -> None:
        return None  # never computes the output itself: SDPA runs, then on_attention

    def on_attention(self, module, *, query, key, attention_mask, scaling, causal, **_) -> None:
        stack, layer = self.layout.locate(module)
        if stack != self.stack or layer not in self.pending:
            return
        self.handler(layer, query.detach().float(), key.detach().float(), attention_mask, scaling, causal)
        self.pending.discard(layer)
        if not self.pending:
            raise _Stop


def _forward_inputs(trace, loaded, image) -> dict:
    """Forward kwargs that reproduce the bundle's full sequence (its token ids, plus pixels for a VLM)."""
    ids = torch.tensor([[token.id for token in trace.tokens]])
    inputs: dict = {"input_ids": ids}
    if loaded.kind == "vlm" and trace.meta["inputs"].get("image"):
        if image is None:
            raise InputError("recomputing attention of this VLM bundle needs its input image; put the image in "
                             "the traces folder's images/ (named by its sha256) or pass `workbench app --images DIR`")
        from workbench.capture.inputs import prepare_input

        meta = trace.meta["inputs"]
        prepared = prepare_input(loaded, meta["prompt"], image, system=meta.get("system"), raw=bool(meta.get("raw")))
        prompt_ids = prepared.input_ids[0]
        if not torch.equal(prompt_ids, ids[0, : len(prompt_ids)]):
            raise InputError("the model tokenises this bundle's prompt differently from when it was traced; "
                             "trace it again with --maps to store the maps")
        inputs.update({k: v for k, v in prepared.model_inputs.items() if torch.is_tensor(v)})
        if "pixel_values" in inputs:
            inputs["pixel_values"] = inputs["pixel_values"].to(loaded.model.dtype)
    return inputs


def _run(trace, stack: str, layers: set[int], handler, model, image, pool: ModelPool) -> None:
    from workbench.capture.backend import capturing
    from workbench.capture.layout import discover_layout

    name = model if isinstance(model, str) else None
    if model is None or isinstance(model, str):
        name = name or str(trace.model.get("name"))
        try:
            loaded, lock = pool.get(name)
        except WorkbenchError as error:
            raise type(error)(f"cannot recompute maps: {error}. Trace again with --maps to store them") from None
    else:
        loaded, lock = model, threading.Lock()
    layout = discover_layout(loaded.model)
    if stack not in layout.stacks or layout.stacks[stack].n_layers != trace.n_layers(stack) or \
            layout.stacks[stack].n_heads != trace.n_heads(stack):
        raise InputError(f"model {loaded.name} does not have the shape of this bundle's {stack} stack; "
                         "it is not the model that was traced")
    inputs = _forward_inputs(trace, loaded, image)
    device = loaded.model.device if hasattr(loaded.model, "device") else "cpu"
    inputs = {k: (v.to(device) if torch.is_tensor(v) else v) for k, v in inputs.items()}
    probe = _Probe(layout, stack, layers, handler)
    with lock, torch.inference_mode(), capturing(loaded.model, probe):
        try:
            loaded.model(**inputs, use_cache=False)
        except _Stop:
            pass
    if probe.pending:
        raise InputError(f"the forward never reached {stack} layers {sorted(probe.pending)}")


def _mask(attention_mask, causal: bool, n_queries: int, n_keys: int):
    from workbench.capture.recorder import mask_spec

    return mask_spec(attention_mask, causal=causal, n_queries=n_queries, n_keys=n_keys)


def layer_maps(trace, layer: int, *, stack: str = "text", heads: list[int] | None = None, model=None, image=None,
               map_dtype: torch.dtype = torch.float32, pool: ModelPool | None = None) -> RecomputedLayer:
    """Full attention maps [head, query_pos, key_pos] of one layer of a bundle, recomputed from the model.

    model: a LoadedModel, a model name, or None (the bundle's own model name). image: a PIL image (VLMs).
    """
    from workbench.kernels import attention_statistics
    from workbench.kernels.api import expand_kv_heads

    n_heads = trace.n_heads(stack)
    wanted = list(range(n_heads)) if heads is None else [int(h) for h in heads]
    if not 0 <= layer < trace.n_layers(stack) or any(not 0 <= h < n_heads for h in wanted):
        raise InputError(f"layer {layer} / heads {wanted} outside the bundle's {stack} stack")
    out: dict = {}
    regions = key_regions(trace, stack)

    def handler(_, query, key, attention_mask, scaling, causal):
        n_queries, n_keys = query.shape[2], key.shape[2]
        spec = _mask(attention_mask, causal, n_queries, n_keys)
        keys = expand_kv_heads(key, query.shape[1])
        per_call = max(1, MAP_GROUP_BYTES // max(1, n_queries * n_keys * 4))
        maps, mass = [], []
        for start in range(0, len(wanted), per_call):
            group = wanted[start:start + per_call]
            stats = attention_statistics(
                query[:, group], keys[:, group], scaling=scaling, mask=spec, key_regions=regions[:n_keys],
                n_regions=len(REGIONS), map_heads=list(range(len(group))), implementation="torch")
            maps.append(stats.maps[0].to(map_dtype))
            mass.append(stats.key_mass[0])
        out["maps"], out["key_mass"] = torch.cat(maps), torch.cat(mass)

    _run(trace, stack, {layer}, handler, model, image, pool or _DEFAULT_POOL)
    stored = stat(trace, stack, layer, "key_mass")
    mismatch = float("nan")
    if stored is not None:
        stored = stored[wanted].float()
        mismatch = float((out["key_mass"].cpu() - stored).abs().max() / stored.abs().max().clamp_min(1e-12))
    return RecomputedLayer(out["maps"].cpu(), wanted, mismatch)


def token_rows(trace, position: int, *, stack: str = "text", model=None, image=None,
               pool: ModelPool | None = None) -> TokenRows:
    """Attention of one query row in every layer and head: [layer, head, key_pos] (fp32)."""
    from workbench.kernels import MaskSpec, attention_statistics

    n = len(trace.tokens) if stack == "text" else trace.dims["stacks"][stack]["positions"]
    if not 0 <= position < n:
        raise InputError(f"position {position} outside the bundle's {n} positions")
    n_layers = trace.n_layers(stack)
    rows: dict[int, torch.Tensor] = {}
    entropy: dict[int, torch.Tensor] = {}
    regions = key_regions(trace, stack)

    def handler(layer, query, key, attention_mask, scaling, causal):
        n_queries, n_keys = query.shape[2], key.shape[2]
        spec = _mask(attention_mask, causal, n_queries, n_keys)
        spec = (MaskSpec(dense=spec.dense[:, :, position:position + 1]) if spec.dense is not None
                else dataclasses.replace(spec, query_offset=position))
        stats = attention_statistics(
            query[:, :, position:position + 1], key, scaling=scaling, mask=spec, key_regions=regions[:n_keys],
            n_regions=len(REGIONS), map_heads=list(range(query.shape[1])), implementation="dense")
        rows[layer] = stats.maps[0, :, 0].cpu()
        entropy[layer] = stats.entropy[0, :, 0].cpu()

    _run(trace, stack, set(range(n_layers)), handler, model, image, pool or _DEFAULT_POOL)
    stacked = torch.stack([rows[layer] for layer in range(n_layers)])
    mismatch = 0.0
    for layer in range(n_layers):
        stored = stat(trace, stack, layer, "entropy")
        if stored is not None:
            mismatch = max(mismatch, float((entropy[layer] - stored[:, position].float()).abs().max()))
    return TokenRows(stacked, position, mismatch)
