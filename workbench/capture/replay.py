"""`Tracer.replay`: attention a stored bundle does not hold, recomputed with one forward over its own tokens.

The forward runs the bundle's token ids (prompt + generated, plus the image for a VLM) through the workbench
attention implementation; for each wanted layer the statistics and full maps of the wanted heads and query
rows are computed from that layer's queries and keys, and the forward stops after the last wanted layer.
A single forward over the final sequence gives the same attention as the traced generation with a KV cache.
Memory: the maps asked for, computed in head groups of at most MAP_GROUP_BYTES of fp32 at a time.

A bundle traced under an intervention (ACT, VAR; or a decoding one, AVC / DAMRO, which edits no attention and so
needs no edit here) is replayed under the same one, rebuilt from its manifest by the
caller (`workbench.interventions.recorded`) and checked here against the record; without it the replay is refused,
since the unedited model's attention is not what the bundle describes. As in capture, the maps are computed from
each layer's queries and keys, so they show that layer's attention before its own edit, in a run whose earlier
layers were edited: what the stored statistics describe. The edited run is rebuilt as it was traced: the prompt
in one forward (where ACT finds its sinks), then the generated tokens in a second forward on the KV cache.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from workbench.capture.attention import capturing, editing
from workbench.capture.generation import CachedDecoder, forward_inputs
from workbench.capture.plan import CapturePlan
from workbench.capture.recorder import mask_adds_bias, mask_spec
from workbench.errors import InputError
from workbench.kernels import MaskSpec, attention_statistics
from workbench.traces.names import stack_key_regions
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
    """What the attention implementation records into during a replay: the wanted layers of one stack.

    A replay runs one forward, or (under an intervention, with generated tokens) the prompt's forward and then the
    generated tokens' forward on the cache; `start` is the text position of the current forward's first query row,
    and the forward stops once every wanted layer is recorded in the `final` one."""

    plan = CapturePlan(kernel="torch")  # SDPA computes each layer's output; statistics come from q and k here

    def __init__(self, layout, stack: str, layers: set[int], compute):
        self.layout, self.stack, self.pending, self.compute = layout, stack, set(layers), compute
        self.parts: dict[int, list] = {layer: [] for layer in layers}
        self.start, self.final = 0, True

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
        if stack != self.stack or layer not in self.parts:
            return
        start = self.start if stack == "text" else 0
        if start and key.shape[2] != start + query.shape[2]:  # a cached forward must see every earlier key
            raise InputError(f"{stack} layer {layer} saw {key.shape[2]} keys for query rows {start}.."
                             f"{start + query.shape[2] - 1}; this bundle cannot be replayed on this model")
        part = self.compute(query.detach().float(), key.detach().float(), attention_mask, scaling, causal, start)
        if part is not None:
            self.parts[layer].append(part)
        if self.final:
            self.pending.discard(layer)
            if not self.pending:
                raise _EnoughLayers


def replay_layers(tracer, trace, *, layers: Sequence[int], stack: str = "text", heads: Sequence[int] | None = None,
                  rows: slice | None = None, image=None, map_dtype: torch.dtype = torch.float32,
                  intervention=None) -> dict:
    """{layer: ReplayedLayer} for `layers` of the bundle `trace` (see the module docstring).

    intervention: the spec the bundle was traced under (`workbench.interventions.recorded(trace.meta)`); required
        for, and only accepted with, a bundle whose manifest records one."""
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
    regions = trace.regions if stack == "text" else stack_key_regions(trace.dims["stacks"][stack])
    n_keys = len(regions)  # the rows' own positions, or a rectangular stack's keys (Mllama's cross-attention)

    runtime = _edit_runtime(tracer, trace, intervention)  # checked before any forward

    def compute(query, key, attention_mask, scaling, causal, start: int):
        """(rows, maps, key_mass, entropy) of the wanted rows among this call's query rows [start, start + n)."""
        n_queries, n_keys = query.shape[2], key.shape[2]
        local = slice(max(rows.start, start) - start, min(rows.stop, start + n_queries) - start)
        if local.start >= local.stop:
            return None
        spec = _rows_of(mask_spec(attention_mask, causal=causal, n_queries=n_queries, n_keys=n_keys), local)
        selected = query[:, :, local]
        per_call = max(1, MAP_GROUP_BYTES // max(1, selected.shape[2] * n_keys * 4))
        maps, mass, entropy = [], [], []
        group_size = query.shape[1] // key.shape[1]
        for first in range(0, len(wanted_heads), per_call):
            group = wanted_heads[first:first + per_call]
            keys = key[:, [h // group_size for h in group]]
            stats = attention_statistics(
                selected[:, group], keys, scaling=scaling, mask=spec, key_regions=regions[:n_keys],
                n_regions=len(REGIONS), map_heads=list(range(len(group))), implementation="torch")
            maps.append(stats.maps[0].to(map_dtype).cpu())
            mass.append(stats.key_mass[0].cpu())
            entropy.append(stats.entropy[0].cpu())
        return torch.cat(maps), torch.cat(mass), torch.cat(entropy)

    probe = _LayerProbe(layout, stack, wanted_layers, compute)
    segments = _segments(trace, stack, n, rows, edited=runtime is not None)
    model = tracer.loaded.model
    with torch.inference_mode(), capturing(model, probe), editing(model, runtime):
        try:
            if len(segments) == 1:
                model(**_bundle_inputs(tracer.loaded, trace, image, segments[0].stop), use_cache=False)
            else:  # an edited generation: the prompt, then the generated tokens on the cache (as traced)
                decoder = CachedDecoder(model)
                probe.final = False
                decoder.start(_bundle_inputs(tracer.loaded, trace, image, segments[0].stop))
                probe.start, probe.final = segments[1].start, True
                decoder.extend(torch.tensor([[token.id for token in trace.tokens[segments[1]]]]))
        except _EnoughLayers:
            pass
    if probe.pending:
        raise InputError(f"the forward never reached {stack} layers {sorted(probe.pending)}")
    whole = rows.start == 0 and rows.stop == n
    return {layer: _joined(parts, wanted_heads, rows, n_keys, map_dtype, whole) for layer, parts in probe.parts.items()}


def _joined(parts: list, heads: list[int], rows: slice, n_keys: int, map_dtype, whole: bool) -> ReplayedLayer:
    """One layer's parts (one per forward, in row order), keys padded to all n_keys positions: a key after a
    forward's last query was not there yet, so it gets no attention from that forward's rows."""
    def padded(tensor):
        return torch.nn.functional.pad(tensor, (0, n_keys - tensor.shape[-1]))

    maps = torch.cat([padded(maps) for maps, _, _ in parts], dim=1)
    mass = sum(padded(key_mass) for _, key_mass, _ in parts) if whole else None
    entropy = torch.cat([entropy for _, _, entropy in parts], dim=1)
    return ReplayedLayer(heads, rows, maps.to(map_dtype), mass, entropy)


def _edit_runtime(tracer, trace, intervention):
    """The runtime of the intervention the bundle was traced under (None without one), after checking that
    `intervention` is that one: a replay without it would show attention the traced run never had."""
    record = (trace.meta.get("capture") or {}).get("intervention")
    redo = "or trace it again with --maps to store the maps"
    if record is None:
        if intervention is not None:
            raise InputError(f"this bundle was traced without an intervention; replay it without one {redo}")
        return None
    name = record.get("name") if isinstance(record, dict) else None
    if intervention is None:
        raise InputError(f"this bundle was traced under intervention {name!r}: replay it with that intervention "
                         f"(workbench.interventions.recorded(trace.meta)) {redo}")
    # compared as JSON: a trace in memory holds tuples where one read from disk holds lists
    given, record = json.loads(json.dumps(intervention.to_json())), json.loads(json.dumps(record))
    differs = sorted(key for key, value in given.items() if record.get(key) != value)
    if differs:
        raise InputError(f"the intervention given differs from the one this bundle was traced under "
                         f"({', '.join(differs)}); replay with workbench.interventions.recorded(trace.meta) {redo}")
    if getattr(intervention, "decoding", False):
        # AVC / DAMRO chose the generated tokens from a contrast run beside the plain one; the bundle holds the plain
        # run's attention over them, which one unedited forward over the bundle's tokens recomputes.
        return None
    return intervention.start(tracer.layout, image_positions=[t.i for t in trace.tokens if t.region == "image"])


def _segments(trace, stack: str, n: int, rows: slice, *, edited: bool) -> list[slice]:
    """The text positions each forward of the replay runs. One forward over the whole sequence, except for an
    edited generation: its intervention saw the prompt in one forward and the generated tokens after it (ACT finds
    its sinks in the prompt's forward), so the prompt goes first and the generated tokens follow on the cache,
    unless no wanted row lies among them (or the stack is not the text stack, which only the prompt's forward runs)."""
    total = len(trace.tokens)
    prompt = int((trace.meta.get("generation") or {}).get("start") or total)
    if not edited or not 0 < prompt < total:
        return [slice(0, total)]
    if stack != "text" or rows.stop <= prompt:
        return [slice(0, prompt)]
    return [slice(0, prompt), slice(prompt, total)]


def _rows_of(mask: MaskSpec, rows: slice) -> MaskSpec:
    """The mask of query rows `rows` as seen from a call that gets only those rows."""
    if mask.dense is not None:
        return MaskSpec(dense=mask.dense[:, :, rows])
    return dataclasses.replace(mask, query_offset=mask.query_offset + rows.start)


def _bundle_inputs(loaded, trace, image, stop: int) -> dict:
    """Forward kwargs that reproduce the bundle's sequence up to position `stop` (its token ids, plus pixels for a
    VLM)."""
    from workbench.capture.inputs import prepare_input

    if loaded.kind == "vision":  # an image encoder's one forward over all its positions: the image again
        if image is None:
            raise InputError("recomputing attention of this vision-encoder bundle needs its input image; put the "
                             "image in the traces folder's images/ (named by its sha256) or pass --images DIR")
        prepared = prepare_input(loaded, None, image)
        if prepared.tokens != trace.tokens:
            raise InputError("this image gives the encoder other positions than the bundle's (another image or "
                             "processor); trace it again with --maps to store the maps")
        return forward_inputs(loaded, prepared.input_ids, prepared.model_inputs)
    ids = torch.tensor([[token.id for token in trace.tokens[:stop]]])
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
