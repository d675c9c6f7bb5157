"""`Tracer.replay`: attention a stored bundle does not hold, recomputed with one forward over its own tokens.

The forward runs the bundle's token ids (prompt + generated, plus the image for a VLM) through the workbench
attention implementation; for each wanted layer the statistics and full maps of the wanted heads and query
rows are computed from that layer's queries and keys, and the forward stops after the last wanted layer.
A single forward over the final sequence gives the same attention as the traced generation with a KV cache.
Memory: the maps asked for, computed in head groups of at most MAP_GROUP_BYTES of fp32 at a time.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from workbench.capture.attention import capturing
from workbench.capture.generation import forward_inputs
from workbench.capture.plan import CapturePlan
from workbench.capture.recorder import mask_adds_bias, mask_spec
from workbench.errors import InputError
from workbench.kernels import MaskSpec, attention_statistics
from workbench.traces.names import vision_regions
from workbench.traces.tokens import REGIONS

MAP_GROUP_BYTES = 256 * 1024 * 1024  # fp32 map memory per attention_statistics call


@dataclass
class ReplayedLayer:
    """One layer of a stored bundle, recomputed. heads: which query heads the tensors hold, in order."""

    heads: list[int]
    rows: slice  # the query positions of maps and entropy
    maps: torch.Tensor  # [head, query_pos (rows), key_pos], fp32 unless asked otherwise
    key_mass: torch.Tensor | None  # [head, key_pos] when all rows were replayed, else None
    entropy: torch.Tensor  # [head, query_pos (rows)]


class _EnoughLayers(Exception):
    """Ends the forward once every wanted layer is recorded (the later layers are not needed)."""


class _LayerProbe:
    """What the attention implementation records into during a replay: the wanted layers of one stack."""

    plan = CapturePlan(kernel="torch")  # SDPA computes each layer's output; statistics come from q and k here

    def __init__(self, layout, stack: str, layers: set[int], compute):
        self.layout, self.stack, self.pending, self.compute = layout, stack, set(layers), compute
        self.results: dict[int, ReplayedLayer] = {}

    def install_hooks(self) -> list:
        return []

    def locate_call(self, module, query, key) -> dict:
        stack, layer = self.layout.locate(module)
        return {"stack": stack, "layer": layer, "map_heads": "replayed"}

    def mask_for(self, attention_mask, *, causal: bool, n_queries: int, n_keys: int) -> MaskSpec:
        return mask_spec(attention_mask, causal=causal, n_queries=n_queries, n_keys=n_keys)

    def mask_adds_bias(self, attention_mask, **_) -> bool:
        return mask_adds_bias(attention_mask)

    def kernel_for(self, kernel: str, query, key, value, **options):
        from workbench.capture.kernel_choice import choose

        return choose(kernel, query, key, value, top_k=self.plan.top_k, **options)

    def on_attention(self, call: dict, *, query, key, attention_mask, scaling, causal, **_) -> None:
        stack, layer = call["stack"], call["layer"]
        if stack != self.stack or layer not in self.pending:
            return
        self.results[layer] = self.compute(query.detach().float(), key.detach().float(), attention_mask, scaling,
                                           causal)
        self.pending.discard(layer)
        if not self.pending:
            raise _EnoughLayers


def replay_layers(tracer, trace, *, layers: Sequence[int], stack: str = "text", heads: Sequence[int] | None = None,
                  rows: slice | None = None, image=None, map_dtype: torch.dtype = torch.float32) -> dict:
    """{layer: ReplayedLayer} for `layers` of the bundle `trace` (see the module docstring)."""
    layout = tracer.layout
    info = layout.stacks.get(stack)
    if info is None or info.n_layers != trace.n_layers(stack) or info.n_heads != trace.n_heads(stack):
        raise InputError(f"model {tracer.loaded.name} does not have the shape of this bundle's {stack} stack; "
                         "it is not the model that was traced")
    wanted_heads = list(range(info.n_heads)) if heads is None else [int(h) for h in heads]
    wanted_layers = {int(layer) for layer in layers}
    if not wanted_layers or any(not 0 <= layer < info.n_layers for layer in wanted_layers) or \
            any(not 0 <= h < info.n_heads for h in wanted_heads):
        raise InputError(f"layers {sorted(wanted_layers)} / heads {wanted_heads} outside the bundle's {stack} stack")
    n = len(trace.tokens) if stack == "text" else trace.dims["stacks"][stack]["positions"]
    rows = rows if rows is not None else slice(0, n)
    if not 0 <= rows.start < rows.stop <= n:
        raise InputError(f"query rows {rows.start}..{rows.stop - 1} outside the bundle's {n} positions")
    regions = trace.regions if stack == "text" else vision_regions(n)

    def compute(query, key, attention_mask, scaling, causal) -> ReplayedLayer:
        n_queries, n_keys = query.shape[2], key.shape[2]
        spec = _rows_of(mask_spec(attention_mask, causal=causal, n_queries=n_queries, n_keys=n_keys), rows)
        selected = query[:, :, rows]
        per_call = max(1, MAP_GROUP_BYTES // max(1, selected.shape[2] * n_keys * 4))
        maps, mass, entropy = [], [], []
        group_size = query.shape[1] // key.shape[1]
        for start in range(0, len(wanted_heads), per_call):
            group = wanted_heads[start:start + per_call]
            keys = key[:, [h // group_size for h in group]]
            stats = attention_statistics(
                selected[:, group], keys, scaling=scaling, mask=spec, key_regions=regions[:n_keys],
                n_regions=len(REGIONS), map_heads=list(range(len(group))), implementation="torch")
            maps.append(stats.maps[0].to(map_dtype).cpu())
            mass.append(stats.key_mass[0].cpu())
            entropy.append(stats.entropy[0].cpu())
        whole = rows.start == 0 and rows.stop == n_queries
        return ReplayedLayer(wanted_heads, rows, torch.cat(maps), torch.cat(mass) if whole else None,
                             torch.cat(entropy))

    probe = _LayerProbe(layout, stack, wanted_layers, compute)
    forward = _bundle_inputs(tracer.loaded, trace, image)
    with torch.inference_mode(), capturing(tracer.loaded.model, probe):
        try:
            tracer.loaded.model(**forward, use_cache=False)
        except _EnoughLayers:
            pass
    if probe.pending:
        raise InputError(f"the forward never reached {stack} layers {sorted(probe.pending)}")
    return probe.results


def _rows_of(mask: MaskSpec, rows: slice) -> MaskSpec:
    """The mask of query rows `rows` as seen from a call that gets only those rows."""
    if mask.dense is not None:
        return MaskSpec(dense=mask.dense[:, :, rows])
    return dataclasses.replace(mask, query_offset=mask.query_offset + rows.start)


def _bundle_inputs(loaded, trace, image) -> dict:
    """Forward kwargs that reproduce the bundle's full sequence (its token ids, plus pixels for a VLM)."""
    from workbench.capture.inputs import prepare_input

    ids = torch.tensor([[token.id for token in trace.tokens]])
    model_inputs: dict = {}
    if loaded.kind == "vlm" and trace.meta["inputs"].get("image"):
        if image is None:
            raise InputError("recomputing attention of this VLM bundle needs its input image; put the image in "
                             "the traces folder's images/ (named by its sha256) or pass `workbench app --images DIR`")
        meta = trace.meta["inputs"]
        prepared = prepare_input(loaded, meta["prompt"], image, system=meta.get("system"), raw=bool(meta.get("raw")))
        prompt_ids = prepared.input_ids[0]
        if not torch.equal(prompt_ids, ids[0, : len(prompt_ids)]):
            raise InputError("the model tokenises this bundle's prompt differently from when it was traced; "
                             "trace it again with --maps to store the maps")
        model_inputs = {k: v for k, v in prepared.model_inputs.items() if torch.is_tensor(v)}
    return forward_inputs(loaded, ids, model_inputs)
