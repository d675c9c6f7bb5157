"""Full attention maps of every layer, for the analyses that need them (rollout, flow, the funnel's mass share).

A bundle that stored the maps of every head of every layer is read as is; otherwise the maps are recomputed with
`Tracer.replay` (one forward over the bundle's own tokens, under the intervention it was traced under), a few
layers per forward so that at most MAP_BUDGET_BYTES of fp32 maps are held at once. Causal stacks are cut to the
first `upto` positions: a row before `upto` never sees a later key, so the cut loses nothing.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import torch

from workbench.errors import InputError
from workbench.traces.names import tensor_name

MAP_BUDGET_BYTES = 1024 * 1024 * 1024  # fp32 maps held at once while replaying: fewer, deeper forwards


def n_positions(trace, stack: str) -> int:
    """Positions (query rows = keys) of `stack`: the tokens of the text stack, the positions of a vision tower."""
    return len(trace.tokens) if stack == "text" else int(trace.dims["stacks"][stack]["positions"])


def is_causal(trace, stack: str) -> bool:
    """Whether attention in `stack` is causal, read from the statistics: the first key is seen by more rows than the
    last (every row sees every key in an encoder or a vision tower)."""
    count = trace.tensor(tensor_name(stack, 0, "key_count"))
    return bool(count[0] > count[-1])


def stores_all_maps(trace, stack: str) -> bool:
    """True when the bundle holds the maps of every head of every layer of `stack`."""
    heads = list(range(trace.n_heads(stack)))
    for layer in range(trace.n_layers(stack)):
        name = tensor_name(stack, layer, "map_heads")
        if not trace.has(name) or trace.tensor(name).tolist() != heads:
            return False
    return True


def layer_maps(trace, *, stack: str = "text", upto: int | None = None, tracer=None,
               progress: Callable[[int, int], None] | None = None) -> Iterator[tuple[int, torch.Tensor]]:
    """(layer, maps [head, query_pos, key_pos] fp32) for every layer in order, positions cut to [0, upto) (causal
    stacks only; all positions otherwise). Stored maps when the bundle has every head of every layer, else
    recomputed through `tracer` (a `workbench.capture.Tracer` of the bundle's model); neither is an InputError.
    progress(done_layers, layers) is called after each layer."""
    n = n_positions(trace, stack)
    keep = n if upto is None or not is_causal(trace, stack) else max(1, min(int(upto), n))
    n_layers = trace.n_layers(stack)
    if stores_all_maps(trace, stack):
        for layer in range(n_layers):
            maps = trace.tensor(tensor_name(stack, layer, "maps"))[:, :keep, :keep].float()
            yield layer, maps
            if progress:
                progress(layer + 1, n_layers)
        return
    if tracer is None:
        raise InputError("this bundle does not store the maps of every layer and head: pass a tracer of its model "
                         "to recompute them (the CLI does), or trace it again with --maps all:all")
    from workbench.interventions import recorded

    intervention = recorded(trace.meta)
    per_layer = trace.n_heads(stack) * keep * keep * 4
    chunk = max(1, MAP_BUDGET_BYTES // max(1, per_layer))
    image = trace.image()  # None for text-only bundles; a VLM replay needs the picture it saw
    for first in range(0, n_layers, chunk):
        wanted = list(range(first, min(n_layers, first + chunk)))
        replayed = tracer.replay(trace, layers=wanted, stack=stack, rows=slice(0, keep), image=image,
                                 intervention=intervention)
        for layer in wanted:
            yield layer, replayed[layer].maps[:, :, :keep].float()
            if progress:
                progress(layer + 1, n_layers)
        del replayed
