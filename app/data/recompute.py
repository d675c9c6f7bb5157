"""Attention maps a statistics-only bundle does not store, recomputed on demand from the model.

    >>> from workbench.app.data.recompute import layer_maps, token_rows
    >>> maps = layer_maps(trace, 5)              # [head, query_pos, key_pos] of layer 5 (fp32)
    >>> rows = token_rows(trace, position=40)    # [layer, head, key_pos]: where token 40 looks, every layer

Both are `Tracer.replay` (one forward over the bundle's own tokens, stopped after the last wanted layer) with
the app's pool of open models. Each result carries how far its statistics are from the ones stored in the
bundle (`mismatch`): near 0 means the same model and input, a large value means the weights (or the image)
differ from what was traced. A bundle traced under an intervention (ACT, VAR) is replayed under the same one,
rebuilt from its manifest, so the maps mean what its stored statistics mean: each layer's attention before its
own edit, in the edited run (see docs/trace-format.md).
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

import torch
from workbench.app.data.long_lived import freeze_long_lived, thaw
from workbench.app.data.tensors import stat

from workbench.errors import InputError, WorkbenchError
from workbench.interventions import recorded


class ModelPool:
    """Tracers opened by model name (registry name or directory), kept for reuse; one forward at a time per model.

    access: a ModelAccess that every name must pass before it loads (the app's server always has one: bundles and
    forms choose the names); None loads any name (a notebook, where the caller is the machine's own user).
    """

    def __init__(self, max_models: int = 2, *, access=None):
        self.max_models = max_models
        self.access = access
        self._models: dict[str, tuple[object, threading.Lock]] = {}
        self._lock = threading.Lock()

    def get(self, name: str):
        """(Tracer, lock) for `name`; the lock serialises forwards (capture toggles the model's attention)."""
        from workbench.capture import Tracer

        if self.access is not None:
            name = self.access.check(name)
        with self._lock:
            if name in self._models:
                self._models[name] = self._models.pop(name)  # most recently used last
                return self._models[name]
            entry = (Tracer.open(name), threading.Lock())
            self._models[name] = entry
            while len(self._models) > self.max_models:
                self._models.pop(next(iter(self._models)))
                thaw()  # the evicted model's reference cycles become collectable again
            freeze_long_lived()  # a model lives until evicted: full collections need not walk its objects
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


def _tracer(trace, model, pool: ModelPool):
    """(Tracer, lock) for `model`: a Tracer, a LoadedModel, a model name, or None (the bundle's own model)."""
    from workbench.capture import Tracer
    from workbench.models.loaded import LoadedModel

    if isinstance(model, Tracer):
        return model, threading.Lock()
    if isinstance(model, LoadedModel):
        return Tracer.open(model), threading.Lock()
    name = model if isinstance(model, str) else str(trace.model.get("name"))[:4096]
    try:
        return pool.get(name)
    except WorkbenchError as error:
        raise type(error)(f"cannot recompute maps: {error}. Trace again with --maps to store them") from None


def layer_maps(trace, layer: int, *, stack: str = "text", heads: list[int] | None = None, model=None, image=None,
               map_dtype: torch.dtype = torch.float32, pool: ModelPool | None = None) -> RecomputedLayer:
    """Full attention maps [head, query_pos, key_pos] of one layer of a bundle, recomputed from the model.

    model: a Tracer, a LoadedModel, a model name, or None (the bundle's own model name). image: a PIL image (VLMs).
    """
    return layers_maps(trace, [layer], stack=stack, heads=heads, model=model, image=image, map_dtype=map_dtype,
                       pool=pool)[layer]


def layers_maps(trace, layers, *, stack: str = "text", heads: list[int] | None = None, model=None, image=None,
                map_dtype: torch.dtype = torch.float32, pool: ModelPool | None = None) -> dict[int, RecomputedLayer]:
    """{layer: RecomputedLayer} for several layers from ONE forward (stopped after the last of them); the maps of
    every wanted layer are held at once, so callers bound len(layers) x heads x n^2 themselves."""
    n_heads = trace.n_heads(stack)
    wanted = list(range(n_heads)) if heads is None else [int(h) for h in heads]
    layers = sorted({int(layer) for layer in layers})
    if any(not 0 <= layer < trace.n_layers(stack) for layer in layers) or any(not 0 <= h < n_heads for h in wanted):
        raise InputError(f"layers {layers} / heads {wanted} outside the bundle's {stack} stack")
    intervention = recorded(trace.meta)  # before any model loads: an old record that cannot be rebuilt is refused
    tracer, lock = _tracer(trace, model, pool or _DEFAULT_POOL)
    with lock:
        replayed = tracer.replay(trace, layers=layers, stack=stack, heads=wanted, image=image, map_dtype=map_dtype,
                                 intervention=intervention)
    out = {}
    for layer in layers:
        stored = stat(trace, stack, layer, "key_mass")
        mismatch = float("nan")
        if stored is not None:
            stored = stored[wanted].float()
            mismatch = float((replayed[layer].key_mass - stored).abs().max() / stored.abs().max().clamp_min(1e-12))
        out[layer] = RecomputedLayer(replayed[layer].maps, wanted, mismatch)
    return out


def token_rows(trace, position: int, *, stack: str = "text", model=None, image=None,
               pool: ModelPool | None = None) -> TokenRows:
    """Attention of one query row in every layer and head: [layer, head, key_pos] (fp32)."""
    n = len(trace.tokens) if stack == "text" else trace.dims["stacks"][stack]["positions"]
    if not 0 <= position < n:
        raise InputError(f"position {position} outside the bundle's {n} positions")
    n_layers = trace.n_layers(stack)
    intervention = recorded(trace.meta)
    tracer, lock = _tracer(trace, model, pool or _DEFAULT_POOL)
    with lock:
        replayed = tracer.replay(trace, layers=range(n_layers), stack=stack, rows=slice(position, position + 1),
                                 image=image, intervention=intervention)
    stacked = torch.stack([replayed[layer].maps[:, 0] for layer in range(n_layers)])
    mismatch = 0.0
    for layer in range(n_layers):
        stored = stat(trace, stack, layer, "entropy")
        if stored is not None:
            mismatch = max(mismatch, float((replayed[layer].entropy[:, 0] - stored[:, position].float()).abs().max()))
    return TokenRows(stacked, position, mismatch)
