"""Per-layer accumulation of attention statistics (and, on request, maps, hidden states, head outputs).

The recorder is fed by the attention implementation (one call per layer per forward) and by forward
pre-hooks on the layer modules. With a KV cache, every forward adds the query rows of its new tokens and
adds their attention to the column sums, so a traced generation yields the same statistics as one
forward over the final sequence. Only one layer's attention statistics are computed at a time.

A sliding-window (or chunked) layer's KV cache keeps only the last window of keys, so a decode step's `key`
does not start at position 0: every call is placed by the absolute position of its first query (announced by
`begin_step`) and its first key (the query start + query rows - key rows), never by the key count alone.

A trace with generated tokens also keeps the column sums of the prompt's query rows alone (prompt_key_mass,
prompt_key_count): Gu et al. measure alpha on the prompt forward, and the generated rows would move it.

Work that depends only on the mask and the token regions is done once per forward, not once per layer: the
visibility counts (key_count, region_count, prompt_key_count) and the kernel's region runs of every distinct
mask of a forward are computed for the first layer that gets it and shared by the others (`CallVisibility`).
Layers that shared the same masks in every forward share one count tensor (stored once in a bundle). The
numerics and unrecorded-row checks (inf / NaN, Z = 1, rows never filled) run once, in one pass over the recorded
statistics at the end, not per call.
"""

from __future__ import annotations

import math

import torch

from workbench.capture.decomposition import DecompositionStore
from workbench.capture.layout import ModelLayout
from workbench.capture.plan import CapturePlan
from workbench.capture.statistics import layer_statistics, rows_of
from workbench.capture.visibility import CallVisibility, CountGroups
from workbench.kernels import MaskSpec, attention_statistics
from workbench.traces.names import tensor_name, tiled_regions, vision_regions
from workbench.traces.tokens import REGIONS

STAT_AXES = {
    "key_mass": ("head", "key_pos"),
    "key_count": ("key_pos",),
    "prompt_key_mass": ("head", "key_pos"),
    "prompt_key_count": ("key_pos",),
    "region_mass": ("head", "query_pos", "region"),
    "region_count": ("query_pos", "region"),
    "span_mass": ("head", "query_pos", "span"),
    "span_count": ("query_pos", "span"),
    "entropy": ("head", "query_pos"),
    "normaliser": ("head", "query_pos"),
    "top_index": ("head", "query_pos", "top"),
    "top_weight": ("head", "query_pos", "top"),
    "maps": ("head", "query_pos", "key_pos"),
    "map_heads": ("head",),
    "hidden_in": ("query_pos", "d_model"),
    "head_out": ("head", "query_pos", "d_model"),
    "head_out_positions": ("query_pos",),
}


def _tile(tensor, one: slice):
    """One tile of a batched tensor (None stays None; a mask broadcast over the batch is shared)."""
    if tensor is None or tensor.shape[0] == 1:
        return tensor
    return tensor[one]


def mask_spec(attention_mask, *, causal: bool, n_queries: int, n_keys: int) -> MaskSpec:
    """Translate what transformers handed to SDPA into a MaskSpec, mirroring SDPA's own reading of it."""
    if attention_mask is None:
        # SDPA applies is_causal only with several queries, aligned to the top-left corner.
        return MaskSpec(causal=causal and n_queries > 1, query_offset=0)
    mask = attention_mask[..., :n_keys]
    visible = mask if mask.dtype == torch.bool else mask > torch.finfo(mask.dtype).min / 2
    return MaskSpec(dense=visible[:, :1])


def mask_adds_bias(attention_mask) -> bool:
    """Whether a float mask adds finite non-zero values to the scores (a position bias riding in the mask),
    beyond hiding keys: MaskSpec keeps only the visibility, so such a mask must stay with SDPA's output."""
    if attention_mask is None or attention_mask.dtype == torch.bool:
        return False
    hidden = attention_mask <= torch.finfo(attention_mask.dtype).min / 2
    return bool((attention_mask.masked_fill(hidden, 0) != 0).any())


class Recorder:
    """Collects everything a trace stores about one input; see CapturePlan for the options."""

    def __init__(self, layout: ModelLayout, plan: CapturePlan, *, text_capacity: int, prompt_length: int):
        self.layout = layout
        self.plan = plan
        self.capacity = {"text": text_capacity}
        self.prompt_length = prompt_length
        self.key_regions = {"text": torch.zeros(text_capacity, dtype=torch.long)}
        self.step_start = 0  # absolute position of the first token of the current text forward
        self.length = {"text": 0}
        # stacks whose keys are not their query rows (Mllama's "cross": text rows over image-feature keys): their
        # rows follow the text's, their key positions are sized by the first call
        self.key_capacity: dict[str, int] = {}
        self._buffers: dict[tuple[str, int], dict[str, torch.Tensor]] = {}
        self._head_out: dict[int, dict[int, torch.Tensor]] = {}  # layer -> position -> [head, d_model]
        self.decomposition = DecompositionStore(layout, text_capacity) if plan.decomposition else None
        self.kernels_run: dict[str, dict[str, int]] = {}  # stack -> implementation -> attention calls
        self.kernel_fallbacks: dict[str, dict[str, int]] = {}  # stack -> why not one-pass -> attention calls
        self._masks: dict[tuple, tuple] = {}  # this forward's masks: (id, shape, ...) -> (mask tensor, MaskSpec, bias)
        self._visibility: dict[tuple, CallVisibility] = {}  # this forward's: (stack, mask, rows, keys) -> counts
        # mask-only counts, one per set of layers sharing masks
        self.counts = CountGroups(self.capacity, self.key_capacity)
        self._places: dict[tuple[int, int], tuple] = {}  # (id(module), heads) -> (stack, layer, map heads)
        self._choices: dict[tuple, object] = {}  # this forward's kernel choices (`kernel_for`)
        self.n_spans = 0  # user spans of the text stack (`set_spans`); keys then carry cell ids (capture/spans.py)
        self._span_ids: torch.Tensor | None = None
        self._tower_next: dict[tuple[str, int], int] = {}  # (vision stack, layer) -> first position of its next call

    def set_spans(self, span_ids: torch.Tensor, n_spans: int) -> None:
        """Measure `n_spans` user spans as well as the regions: span_ids [prompt positions] (n_spans: no span). Call
        before `set_regions("text", ...)`; text keys then carry cell ids, split back after each kernel call."""
        self.n_spans = n_spans
        self._span_ids = torch.full((self.capacity["text"],), n_spans, dtype=torch.long)
        self._span_ids[:len(span_ids)] = span_ids

    # -- driven by the tracer -------------------------------------------------------------------------
    def set_regions(self, stack: str, regions: torch.Tensor, start: int = 0) -> None:
        if stack == "text" and self.n_spans:
            from workbench.capture.spans import cell_ids

            regions = cell_ids(regions, self._span_ids[start:start + len(regions)], self.n_spans)
        if stack not in self.key_regions:
            self.key_regions[stack] = torch.zeros(len(regions), dtype=torch.long)
            self.capacity[stack] = len(regions)
        self.key_regions[stack][start:start + len(regions)] = regions

    def begin_step(self, start: int, length: int) -> None:
        self.counts.add_forward(self._visibility.values(), prompt_length=self.prompt_length)
        self._visibility.clear()
        self._masks.clear()  # a new forward builds new masks
        self._choices.clear()  # keyed by this forward's masks
        self._tower_next.clear()
        self.step_start = start
        self.length["text"] = max(self.length["text"], start + length)
        for stack in self.key_capacity:
            self.length[stack] = self.length["text"]

    def install_hooks(self) -> list:
        handles = self.decomposition.install_hooks(self) if self.decomposition is not None else []
        handles += self._size_towers()
        if not self.plan.hidden_states:
            return handles
        for index, layer_module in enumerate(self.layout.stacks["text"].layers):
            def hook(module, args, kwargs, index=index):
                self.record_hidden(index, (args[0] if args else kwargs["hidden_states"])[0])
            handles.append(layer_module.register_forward_pre_hook(hook, with_kwargs=True))
        return handles

    def record_hidden(self, layer: int, hidden: torch.Tensor) -> None:
        """The residual stream entering text `layer` for this forward's rows: hidden [query_pos, d_model]."""
        rows = slice(self.step_start, self.step_start + hidden.shape[0])
        self._layer_buffers("text", layer)["hidden_in"][rows] = hidden.detach().float()

    def _size_towers(self) -> list:
        """Hooks that size each vision stack from its first layer's input before any of its attention calls: a
        tower that encodes several tiles (anyres crops, image splits: [tile, position, d_model]) or packs them into
        one sequence attended in chunks (Qwen2-VL: [position, d_model]) keeps all of them, one after the other."""
        handles = []
        for stack in self.layout.stacks.values():
            if stack.name in ("text", "cross") or not stack.layers:
                continue

            def size(module, args, kwargs, name=stack.name):
                hidden = args[0] if args else kwargs["hidden_states"]
                if name in self.key_regions:
                    return
                tiles, length = (hidden.shape[0], hidden.shape[1]) if hidden.dim() == 3 else (1, hidden.shape[0])
                if self.layout.stacks[name].tiles is not None:  # tiles laid end to end in one sequence (Mllama)
                    self.set_regions(name, tiled_regions(length, *self.layout.stacks[name].tiles).repeat(tiles))
                    self.length[name] = tiles * length
                    return
                # a tile is a square grid of patches, after a [CLS] when one longer (CLIP, InternVL; not SigLIP)
                with_cls = hidden.dim() == 3 and math.isqrt(length) ** 2 != length
                regions = vision_regions(length) if with_cls else torch.full(
                    (length,), REGIONS.index("image"), dtype=torch.long)
                self.set_regions(name, regions.repeat(tiles))
                self.length[name] = tiles * length
            handles.append(stack.layers[0].register_forward_pre_hook(size, with_kwargs=True))
        return handles

    # -- driven by the attention implementation --------------------------------------------------------
    def on_attention(self, call: dict, *, query, key, attention_mask, scaling, causal, attn_output,
                     log_normaliser=None, value=None, kernel: str = "torch", fallback: str | None = None) -> None:
        """Record one attention call (located by `locate_call`) whose output was computed elsewhere (SDPA):
        two-pass statistics by `kernel`; fallback: why "auto" did not take the one-pass kernel (None: it was not
        asked to)."""
        if call["tiles"] > 1:  # a vision tower's tiles: each one's statistics at its own positions
            for tile, tile_call in self._tile_calls(call):
                one = slice(tile, tile + 1)
                self.on_attention(tile_call, query=query[one], key=key[one], attention_mask=_tile(attention_mask, one),
                                  scaling=scaling, causal=causal, attn_output=attn_output[one],
                                  log_normaliser=_tile(log_normaliser, one), value=_tile(value, one), kernel=kernel,
                                  fallback=fallback)
            return
        mask = self.mask_for(attention_mask, causal=causal, n_queries=query.shape[2], n_keys=key.shape[2])
        stats = layer_statistics(
            query.detach(), key.detach(), scaling=scaling, mask=mask,
            key_regions=call["key_regions"].to(query.device), n_regions=call["n_regions"],
            top_k=self.plan.top_k, map_heads=call["map_heads"], implementation=kernel,
            log_normaliser=log_normaliser,
        )
        self._count_kernel(call["stack"], kernel, fallback)
        self.visibility(call, mask, query)  # counts once per forward and mask, whatever the kernel computed
        self._record(call, stats, query=query, key=key, value=value, scaling=scaling, attn_output=attn_output,
                     mask=mask)

    def attend_fused(self, call: dict, *, query, key, value, scaling, mask: MaskSpec):
        """The layer output [batch, query_pos, head, d_head] and its statistics from one pass of the one-pass CPU
        kernel, recorded. Only for calls `kernel_choice.choose` gave to "one-pass" (mask: from `mask_spec`)."""
        from workbench.kernels import fused_cpu

        if call["tiles"] > 1:  # a vision tower's tiles, one after the other
            return torch.cat([self.attend_fused(tile_call, query=query[tile:tile + 1], key=key[tile:tile + 1],
                                                value=value[tile:tile + 1], scaling=scaling, mask=mask)
                              for tile, tile_call in self._tile_calls(call)])
        shared = self.visibility(call, mask, query)
        output, _, stats = fused_cpu.fused_attention(
            query.detach(), key.detach(), value.detach(), scaling=scaling, mask=mask,
            key_regions=call["key_regions"], n_regions=call["n_regions"], runs=shared.runs, counts=shared.counts,
        )
        self._count_kernel(call["stack"], "one-pass")
        self._record(call, stats, query=query, key=key, value=value, scaling=scaling, attn_output=output, mask=mask)
        return output

    def mask_for(self, attention_mask, *, causal: bool, n_queries: int, n_keys: int) -> MaskSpec:
        """`mask_spec` of one call, shared by every layer handed the same mask tensor (or none) in this forward
        (transformers builds one per layer type), so a mask's key intervals and counts are found once per
        forward, not per layer."""
        return self._mask_entry(attention_mask, causal, n_queries, n_keys)[1]

    def mask_adds_bias(self, attention_mask, *, causal: bool, n_queries: int, n_keys: int) -> bool:
        """`mask_adds_bias` of one call, looked at once per mask tensor and forward."""
        entry = self._mask_entry(attention_mask, causal, n_queries, n_keys)
        if entry[2] is None:
            entry[2] = mask_adds_bias(attention_mask)
        return entry[2]

    def _mask_entry(self, attention_mask, causal: bool, n_queries: int, n_keys: int) -> list:
        # masks are built per forward, never edited in place; the tensor is kept with its spec, so its id is not
        # reused meanwhile
        key = (id(attention_mask) if attention_mask is not None else None, causal, n_queries, n_keys)
        if key not in self._masks:
            self._masks[key] = [attention_mask, mask_spec(attention_mask, causal=causal, n_queries=n_queries,
                                                          n_keys=n_keys), False if attention_mask is None else None]
        return self._masks[key]

    def visibility(self, call: dict, mask: MaskSpec, query) -> CallVisibility:
        """The mask-only counts and region runs of this call (`mask` from `mask_for`), computed by the first layer
        of this forward that has this mask over these keys and reused by the others."""
        key = (call["stack"], id(mask), call["rows"].start, call["keys"].start, call["n_keys"], query.shape[2])
        shared = self._visibility.get(key)
        if shared is None:
            shared = self._visibility[key] = CallVisibility(call, mask, batch=query.shape[0], n_queries=query.shape[2])
        shared.layers.append(call["layer"])
        return shared

    def _count_kernel(self, stack: str, kernel: str, fallback: str | None = None) -> None:
        counts = self.kernels_run.setdefault(stack, {})
        counts[kernel] = counts.get(kernel, 0) + 1
        if fallback is not None:
            reasons = self.kernel_fallbacks.setdefault(stack, {})
            reasons[fallback] = reasons.get(fallback, 0) + 1

    def locate_call(self, module, query, key) -> dict:
        """Where one attention call belongs: stack, layer, rows it fills (`start`: its first query's position),
        its keys' positions (`keys`; a sliding-window cache holds only the last window), heads whose maps are
        kept (None: no maps of this layer), regions. Located once per call; `on_attention` / `attend_fused` take it."""
        place = self._places.get((id(module), query.shape[1]))
        if place is None:  # where a module sits and which of its heads keep maps do not change: found once
            stack, layer = self.layout.locate(module)
            selection = self.plan.maps.get("text" if stack == "cross" else stack)  # --maps: the language model's
            place = self._places[id(module), query.shape[1]] = (
                stack, layer, selection.head_list(query.shape[1]) if selection and selection.wants(layer) else None)
        stack, layer, map_heads = place
        n_queries, n_keys = query.shape[2], key.shape[2]
        if stack == "cross":
            return self._locate_cross(stack, layer, map_heads, n_queries, n_keys)
        if stack not in self.key_regions:  # a vision tower no hook sized: [CLS] then patches, all in one call
            self.set_regions(stack, vision_regions(n_keys))
            self.length[stack] = n_keys
        tiles = query.shape[0] if stack != "text" else 1
        if stack == "text":
            start = self.step_start
        else:  # a tower's calls of one layer (tiles of a batch, chunks of a packed sequence) follow one another
            start = self._tower_next.get((stack, layer), 0)
            self._tower_next[stack, layer] = start + tiles * n_queries
        key_start = start + n_queries - n_keys  # the cache returns the latest keys, ending with this call's own
        if key_start < 0 or start + n_queries > self.capacity[stack]:
            raise RuntimeError(f"{stack} layer {layer}: {n_queries} queries over {n_keys} keys do not fit a forward "
                               f"announced at position {start} (begin_step) of a {self.capacity[stack]}-position trace")
        return {"stack": stack, "layer": layer, "start": start, "rows": slice(start, start + n_queries),
                "keys": slice(key_start, key_start + n_keys), "n_keys": n_keys, "map_heads": map_heads,
                "key_regions": self.key_regions[stack][key_start:key_start + n_keys],
                "n_regions": len(REGIONS) * (self.n_spans + 1) if stack == "text" else len(REGIONS), "tiles": tiles}

    def _locate_cross(self, stack: str, layer: int, map_heads, n_queries: int, n_keys: int) -> dict:
        """A cross-attention call: this forward's text rows over every image-feature key (tiles of [CLS] and
        patches), the keys sized by the first call; a decode step reuses the cached keys, all of them."""
        if stack not in self.key_regions:
            self.key_regions[stack] = tiled_regions(n_keys, *self.layout.stacks[stack].tiles)
            self.key_capacity[stack] = n_keys
            self.capacity[stack] = self.capacity["text"]
            self.length[stack] = self.length["text"]
        if n_keys != self.key_capacity[stack]:
            raise RuntimeError(f"{stack} layer {layer}: {n_keys} keys, but the first call had "
                               f"{self.key_capacity[stack]} (one image per trace)")
        start = self.step_start
        return {"stack": stack, "layer": layer, "start": start, "rows": slice(start, start + n_queries),
                "keys": slice(0, n_keys), "n_keys": n_keys, "map_heads": map_heads,
                "key_regions": self.key_regions[stack], "n_regions": len(REGIONS), "tiles": 1}

    def key_length(self, stack: str) -> int:
        """Key positions of `stack`'s statistics: its own positions, or its image-feature keys (the cross stack)."""
        return self.key_capacity.get(stack, self.length.get(stack, 0))

    def _tile_calls(self, call: dict):
        """(tile index, the call of that one tile) for each tile of a batched vision-tower call."""
        n_queries = call["rows"].stop - call["rows"].start
        for tile in range(call["tiles"]):
            start = call["start"] + tile * n_queries
            keys = slice(call["keys"].start + tile * n_queries, call["keys"].stop + tile * n_queries)
            yield tile, {**call, "start": start, "rows": slice(start, start + n_queries), "keys": keys, "tiles": 1,
                         "key_regions": self.key_regions[call["stack"]][keys]}

    def kernel_for(self, kernel: str, query, key, value, *, mask: MaskSpec, biased_mask: bool, wants_maps: bool,
                   editing: bool, dropout: float):
        """`kernel_choice.choose` for one call, decided once per forward for the calls that agree in everything it
        reads (the mask, the tensors' kind and shapes, maps of the layer, edit, dropout)."""
        from workbench.capture.kernel_choice import choose

        key_ = (kernel, id(mask), biased_mask, wants_maps, editing, dropout, query.dtype, key.dtype, value.dtype,
                query.is_cuda, query.shape[1:], key.shape[1:], value.shape[1:])
        choice = self._choices.get(key_)
        if choice is None:
            choice = self._choices[key_] = choose(kernel, query, key, value, mask=mask, biased_mask=biased_mask,
                                                  wants_maps=wants_maps, top_k=self.plan.top_k, editing=editing,
                                                  dropout=dropout)
        return choice

    def _record(self, call: dict, stats, *, query, key, value, scaling, attn_output, mask: MaskSpec) -> None:
        stack, layer, rows, keys = call["stack"], call["layer"], call["rows"], call["keys"]
        buffer = self._layer_buffers(stack, layer)
        buffer["key_mass"][:, keys] += stats.key_mass[0]  # (copies from another device where the stats ran)
        if stack == "text" and call["start"] < self.prompt_length:
            self._record_prompt_columns(buffer, call, stats, query=query, key=key, scaling=scaling, mask=mask)
        if stack == "text" and self.n_spans:
            from workbench.capture.spans import split_cells

            buffer["region_mass"][:, rows], buffer["span_mass"][:, rows] = split_cells(
                stats.region_mass[0], len(REGIONS), self.n_spans)
        else:
            buffer["region_mass"][:, rows] = stats.region_mass[0]
        buffer["entropy"][:, rows] = stats.entropy[0]
        buffer["normaliser"][:, rows] = stats.normaliser[0]
        if self.plan.top_k:
            buffer["top_index"][:, rows, : stats.top_index.shape[-1]] = stats.top_index[0].cpu() + keys.start
            buffer["top_weight"][:, rows, : stats.top_weight.shape[-1]] = stats.top_weight[0].cpu()
        if call["map_heads"] is not None:
            buffer["maps"][:, rows, keys] = stats.maps[0].cpu().to(buffer["maps"].dtype)
        if stack == "text" and self.plan.head_outputs is not None:
            self._record_head_outputs(layer, call["start"], attn_output)
        if stack == "text" and self.decomposition is not None:
            self.decomposition.on_attention(layer, call["start"], keys.start, query, key, value, scaling)

    def _record_prompt_columns(self, buffer, call: dict, stats, *, query, key, scaling, mask: MaskSpec) -> None:
        """Add the column sums of this call's prompt query rows to prompt_key_mass (prompt_key_count is mask-only:
        `_flush_counts`). A call that mixes prompt and generated rows (one forward over the whole sequence)
        computes its prompt rows' part again."""
        n_queries = query.shape[2]
        prompt_rows = min(n_queries, self.prompt_length - call["start"])
        if prompt_rows <= 0:
            return
        if prompt_rows < n_queries:
            stats = attention_statistics(
                query.detach()[:, :, :prompt_rows], key.detach(), scaling=scaling, mask=rows_of(mask, 0, prompt_rows),
                key_regions=call["key_regions"].to(query.device), n_regions=call["n_regions"], implementation="torch")
        buffer["prompt_key_mass"][:, call["keys"]] += stats.key_mass[0].cpu()

    # -- internals -------------------------------------------------------------------------------------
    def _layer_buffers(self, stack: str, layer: int) -> dict[str, torch.Tensor]:
        key = (stack, layer)
        if key not in self._buffers:
            self._buffers[key] = self._allocate(stack, layer)
        return self._buffers[key]

    def _allocate(self, stack: str, layer: int) -> dict[str, torch.Tensor]:
        info = self.layout.stacks[stack]
        n, heads, regions = self.capacity[stack], info.n_heads, len(REGIONS)
        n_keys = self.key_capacity.get(stack, n)
        buffer = {
            "key_mass": torch.zeros(heads, n_keys),
            **({"prompt_key_mass": torch.zeros(heads, n)} if stack == "text" else {}),
            "region_mass": torch.zeros(heads, n, regions),
            **({"span_mass": torch.zeros(heads, n, self.n_spans)} if stack == "text" and self.n_spans else {}),
            "entropy": torch.zeros(heads, n),
            "normaliser": torch.zeros(heads, n),
        }
        if self.plan.top_k:
            buffer["top_index"] = torch.full((heads, n, self.plan.top_k), -1, dtype=torch.long)
            buffer["top_weight"] = torch.zeros(heads, n, self.plan.top_k)
        selection = self.plan.maps.get("text" if stack == "cross" else stack)
        if selection and selection.wants(layer):
            map_heads = selection.head_list(heads)
            buffer["maps"] = torch.zeros(len(map_heads), n, n_keys, dtype=getattr(torch, self.plan.map_dtype))
            buffer["map_heads"] = torch.tensor(map_heads, dtype=torch.long)
        if stack == "text" and self.plan.hidden_states:
            buffer["hidden_in"] = torch.zeros(n, info.d_model)
        return buffer

    def _wants_head_output(self, position: int) -> bool:
        wanted = self.plan.head_outputs
        if wanted == "all" or wanted == "last":
            return True
        if wanted == "generated":
            return position >= self.prompt_length
        return position in wanted

    def _record_head_outputs(self, layer: int, start: int, attn_output: torch.Tensor) -> None:
        # attn_output: [batch, query_pos, head, d_head]; W_O: [d_model, head * d_head]
        n_heads, d_head = attn_output.shape[2], attn_output.shape[3]
        w_out = self.layout.output_projection("text", layer).detach().float()
        w_out = w_out.reshape(w_out.shape[0], n_heads, d_head)
        store = self._head_out.setdefault(layer, {})
        for row in range(attn_output.shape[1]):
            position = start + row
            if self._wants_head_output(position):
                head_vectors = attn_output[0, row].detach().float()  # [head, d_head]
                store[position] = torch.einsum("hd,mhd->hm", head_vectors, w_out).cpu()

    # -- checks and output ------------------------------------------------------------------------------------
    def _stored_layers(self):
        """(stack, layer, length, statistics of [0, length)) of every recorded layer, counts included."""
        self.counts.add_forward(self._visibility.values(), prompt_length=self.prompt_length)
        self._visibility.clear()
        counts = self.counts.by_layer()
        split: dict[int, dict[str, torch.Tensor]] = {}  # a count tensor shared by layers is split once
        for (stack, layer), buffer in sorted(self._buffers.items()):
            n = self.length[stack]
            own = counts.get((stack, layer)) or self.counts.allocate(stack)
            if stack == "text" and self.n_spans:
                own = {**own, **self._split_counts(own["region_count"], split)}
            yield stack, layer, n, {**buffer, **own}

    def _split_counts(self, cell_count: torch.Tensor, split: dict) -> dict[str, torch.Tensor]:
        """region_count and span_count [query_pos, region | span] of per-cell counts (zeros: no call counted)."""
        from workbench.capture.spans import split_cells

        if id(cell_count) not in split:
            if cell_count.shape[-1] != len(REGIONS) * (self.n_spans + 1):  # allocated for a layer no call reached
                cell_count = torch.zeros(*cell_count.shape[:-1], len(REGIONS) * (self.n_spans + 1), dtype=torch.long)
            regions, spans = split_cells(cell_count, len(REGIONS), self.n_spans)
            split[id(cell_count)] = {"region_count": regions, "span_count": spans}
        return split[id(cell_count)]

    def checks(self) -> tuple[int, float, int, list[str]]:
        """(non-finite statistics, max |Z - 1|, query rows no attention call filled, layers as "text layer 3" where
        any failed) over everything recorded, in one pass over the layers: fp16 overflow or a bad mask shows as
        inf/NaN statistics or rows whose weights do not sum to 1; each row of a single-input trace sees at least
        one key, so a missing row is a capture that went wrong. Checked once at the end: a non-finite value stays
        non-finite in the column sums it joins, and every row's entropy, region shares and Z are stored as
        computed."""
        from itertools import groupby

        from workbench.traces.health import Z_TOLERANCE, clean_layers, layer_checks

        non_finite, worst, missing, flagged = 0, 0.0, 0, []
        for stack, layers in groupby(self._stored_layers(), key=lambda stored: stored[0]):  # sorted by stack
            checked = [(layer, {
                "key_mass": stats["key_mass"][:, :self.key_length(stack)], "region_mass": stats["region_mass"][:, :n],
                "entropy": stats["entropy"][:, :n], "normaliser": stats["normaliser"][:, :n],
                "region_count": stats["region_count"][:n]}) for _, layer, n, stats in layers]
            clean = clean_layers([stats for _, stats in checked])  # a healthy stack in one pass
            if clean is not None:
                worst = max(worst, clean)
                continue
            for layer, stats in checked:
                count, error, rows = layer_checks(stats)
                non_finite, worst, missing = non_finite + count, max(worst, error), missing + rows
                if count or rows or error >= Z_TOLERANCE:
                    flagged.append(f"{stack} layer {layer}")
        return non_finite, worst, missing, flagged

    def tensors(self) -> dict[str, tuple[torch.Tensor, tuple[str, ...]]]:
        """Everything recorded, trimmed to the final length, as name -> (tensor, axes)."""
        out: dict[str, tuple[torch.Tensor, tuple[str, ...]]] = {}
        trimmed_once: dict[int, torch.Tensor] = {}  # a count tensor shared by layers stays one tensor (saved once)
        for stack, layer, n, buffer in self._stored_layers():
            for stat, tensor in buffer.items():
                if stat.startswith("prompt_key_") and n <= self.prompt_length:
                    continue  # no generated row: the prompt's columns are key_mass / key_count themselves
                axes = STAT_AXES[stat]
                if id(tensor) not in trimmed_once:
                    trimmed = tensor
                    for dim, axis in enumerate(axes):
                        if axis == "query_pos" or (axis == "key_pos" and stack not in self.key_capacity):
                            trimmed = trimmed.narrow(dim, 0, n)
                    trimmed_once[id(tensor)] = trimmed.contiguous()
                out[tensor_name(stack, layer, stat)] = (trimmed_once[id(tensor)], axes)
        for layer, by_position in sorted(self._head_out.items()):
            positions = sorted(by_position)
            if self.plan.head_outputs == "last":
                positions = positions[-1:]
            vectors = torch.stack([by_position[p] for p in positions], dim=1)  # [head, position, d_model]
            out[tensor_name("text", layer, "head_out")] = (vectors, STAT_AXES["head_out"])
            out[tensor_name("text", layer, "head_out_positions")] = (
                torch.tensor(positions, dtype=torch.long), STAT_AXES["head_out_positions"])
        if self.decomposition is not None:
            named = lambda layer, stat: tensor_name("text", layer, stat)  # noqa: E731
            out.update(self.decomposition.tensors(self.length["text"], named))
        return out
