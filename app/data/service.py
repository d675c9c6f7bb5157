"""`AppData`: everything the pages read, sliced and cached on the server (the browser only holds ids).

One instance per app. Derived values are cached under the bundle's key (id + manifest mtime), so a
bundle replaced on disk is never served stale, and a layer opened by one user is instant for the next.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from workbench.app.data import results as results_mod
from workbench.app.data.cache import LRUCache
from workbench.app.data.catalog import Catalog
from workbench.app.data.images import ImageFinder, data_uri, model_view
from workbench.app.data.jobs import TraceJobs
from workbench.app.data.metrics import Metric, statistics_metrics
from workbench.app.data.model_access import ModelAccess
from workbench.app.data.recompute import ModelPool, layer_maps, layers_maps, token_rows
from workbench.app.data.tensors import read_first_axis, stored_map_heads, tensor_name
from workbench.app.data.thumbnails import THUMBNAIL_SIDE, LayerThumbnails, pool_heads
from workbench.app.data.uploads import Uploads

from workbench.errors import InputError

RECOMPUTE_LAYER_BYTES = 512 * 1024 * 1024  # fp16 budget for keeping every head of a recomputed layer
MISMATCH_WARNING = 1e-2


@dataclass(frozen=True)
class HeadMap:
    values: torch.Tensor  # [query_pos, key_pos] float32
    source: str  # "stored" | "recomputed"
    note: str
    warning: str | None = None


class AppData:
    def __init__(self, root, *, image_dirs=(), cache_bytes: int = 1536 * 1024 * 1024, allow_recompute: bool = True,
                 allow_model_dirs=(), pool: ModelPool | None = None):
        """allow_model_dirs: model folders (or folders of model folders) the server may load besides registry
        models, for recompute and trace jobs; a bundle naming any other model cannot make the server load it."""
        from workbench.models.registry import data_root

        self.root = Path(root).expanduser().resolve()
        self.catalog = Catalog(self.root)
        self.images = ImageFinder([self.root, *image_dirs, data_root() / "images"])
        self.access = ModelAccess(allow_model_dirs)
        self.pool = pool or ModelPool(access=self.access)
        if self.pool.access is None:
            self.pool.access = self.access  # a pool handed in still loads only what this server allows
        self.cache = LRUCache(max_items=1024, max_bytes=cache_bytes)
        self.jobs = TraceJobs(self.root, self.pool, catalog=self.catalog)
        self.uploads = Uploads(self.root, in_use=self.jobs.images_in_use)
        self.allow_recompute = allow_recompute

    # -- bundles ------------------------------------------------------------------------------------
    def info(self, bundle_id):
        return self.catalog.info(bundle_id)

    def trace(self, bundle_id):
        return self.catalog.open(bundle_id)

    def health(self, bundle_id):
        """The bundle's numerics Health: the manifest's verdict and the one recomputed from its statistics."""
        from workbench.traces.health import health

        info = self.info(bundle_id)
        return self.cache.get_or_compute((info.key, "health"), lambda: health(self.trace(bundle_id)))

    def resolve(self, bundle_id) -> str | None:
        """A valid bundle id: the given one if it exists, else the default (None when there is none)."""
        if isinstance(bundle_id, str) and bundle_id in self.catalog.ids():
            return bundle_id
        return self.catalog.default_id()

    # -- model view ---------------------------------------------------------------------------------
    def metrics(self, bundle_id, stack: str = "text") -> tuple[dict[str, Metric], list[str]]:
        """Statistics metrics, result metrics, and placeholders for analyses the bundle lacks."""
        info = self.info(bundle_id)
        trace = self.trace(bundle_id)
        if stack not in trace.stacks:
            raise InputError(f"this bundle has no {stack} stack (it has {', '.join(trace.stacks)})")

        def compute():
            metrics = statistics_metrics(trace, stack)
            extra, warnings = results_mod.head_metrics(trace.results, stack, trace.n_layers(stack), trace.n_heads(stack))
            metrics.update(extra)
            present = results_mod.present(trace.results)
            for key, label in (("vhd", "VHD (vision-aware head divergence)"), ("routes", "route frequency"),
                               ("sinks", "sink analysis (hidden sinks, image-centric heads)"),
                               ("circuits", "circuit firings")):
                if key == "vhd" and info.kind != "vlm":
                    continue
                if results_mod.ANALYSES[key].analysis not in present:
                    metrics[f"missing:{key}"] = Metric(f"missing:{key}", label, "", None, source=key,
                                                       hint=results_mod.hint(key, info.path, trace))
            return metrics, warnings

        return self.cache.get_or_compute((info.key, "metrics", stack), compute)

    # -- head view ----------------------------------------------------------------------------------
    def head_map(self, bundle_id, stack: str, layer: int, head: int) -> HeadMap:
        info = self.info(bundle_id)
        trace = self.trace(bundle_id)
        if stack not in trace.stacks or not 0 <= layer < trace.n_layers(stack) or not 0 <= head < trace.n_heads(stack):
            raise InputError(f"no {stack} layer {layer} head {head} in this bundle")

        def compute() -> HeadMap:
            stored = stored_map_heads(trace, stack, layer)
            if head in stored:
                name = tensor_name(stack, layer, "maps")
                values = read_first_axis(trace, name, stored.index(head)).float()
                dtype = str(values.dtype).removeprefix("torch.")
                return HeadMap(values, "stored", f"stored map ({trace.meta.get('capture', {}).get('map_dtype', dtype)})")
            if not self.allow_recompute:
                raise InputError("this bundle stores statistics only and the app runs with --no-recompute; trace "
                                 f"again with --maps {layer}:all to store this layer's maps")
            return self._recomputed_head(info, trace, stack, layer, head)

        return self.cache.get_or_compute((info.key, "map", stack, layer, head), compute)

    def _recomputed_head(self, info, trace, stack, layer, head) -> HeadMap:
        n = trace.dims["stacks"][stack]["positions"]
        all_heads = n * n * trace.n_heads(stack) * 2 <= RECOMPUTE_LAYER_BYTES
        key = (info.key, "recomputed", stack, layer) if all_heads else (info.key, "recomputed", stack, layer, head)
        ran = []  # filled when this call runs the forward (not when another head's request already did)

        def compute():
            started = time.perf_counter()
            image = self.image(info.id) if trace.meta["inputs"].get("image") else None
            result = layer_maps(trace, layer, stack=stack, heads=None if all_heads else [head], image=image,
                                map_dtype=torch.float16, pool=self.pool)
            ran.append(True)
            return result, time.perf_counter() - started  # the time stays with the maps for later cache hits

        layer_result, seconds = self.cache.get_or_compute(key, compute)
        values = layer_result.maps[layer_result.heads.index(head)].float()
        mismatch = layer_result.mismatch
        when = f"{seconds:.2f} s" if ran else f"{seconds:.2f} s for the whole layer earlier, served from the server's cache"
        note = (f"recomputed on the server with {trace.model.get('name')} (one forward, stopped after layer {layer}; "
                f"{when}); the bundle stores statistics only")
        warning = None
        if not math.isnan(mismatch) and mismatch > MISMATCH_WARNING:
            warning = (f"the recomputed map does NOT match the bundle's statistics (max relative key-mass "
                       f"difference {mismatch:.2g}): the weights or the input differ from what was traced")
        elif not math.isnan(mismatch):
            note += f"; matches the stored statistics (max relative key-mass difference {mismatch:.1e})"
        return HeadMap(values, "recomputed", note, warning)

    # -- every head at once ------------------------------------------------------------------------
    def thumbnails(self, bundle_id, stack: str, layers, side: int = THUMBNAIL_SIDE) -> list[LayerThumbnails]:
        """Pooled maps of every head of `layers` (stored maps, else recomputed: one forward for as many layers
        as fit the recompute budget at once); cached per layer, so the full maps are never kept for this."""
        info = self.info(bundle_id)
        trace = self.trace(bundle_id)
        layers = [int(layer) for layer in layers]
        if stack not in trace.stacks or any(not 0 <= layer < trace.n_layers(stack) for layer in layers):
            raise InputError(f"no {stack} layers {layers} in this bundle")

        def key(layer):
            return info.key, "thumbnails", stack, layer, side

        missing = [layer for layer in layers if self.cache.get(key(layer)) is None]
        if missing:
            for layer, pooled in self._pooled_layers(info, trace, stack, missing, side).items():
                self.cache.put(key(layer), pooled)
        return [self.cache.get_or_compute(key(layer), lambda layer=layer: self._pooled_layers(
            info, trace, stack, [layer], side)[layer]) for layer in layers]

    def _pooled_layers(self, info, trace, stack, layers, side) -> dict[int, LayerThumbnails]:
        n_heads = trace.n_heads(stack)
        out, replay = {}, []
        for layer in layers:
            recomputed = self.cache.get((info.key, "recomputed", stack, layer))  # a Head page opened it earlier
            if stored_map_heads(trace, stack, layer) == list(range(n_heads)):
                name = tensor_name(stack, layer, "maps")
                out[layer] = pool_heads(layer, [read_first_axis(trace, name, h) for h in range(n_heads)], side=side,
                                        source="stored")
            elif recomputed is not None:
                out[layer] = pool_heads(layer, recomputed[0].maps, side=side, source="recomputed",
                                        mismatch=recomputed[0].mismatch)
            else:
                replay.append(layer)
        if replay and not self.allow_recompute:
            raise InputError("this bundle stores statistics only and the app runs with --no-recompute; trace again "
                             "with --maps all to store the maps")
        n = trace.dims["stacks"][stack]["positions"]
        layer_bytes = n * n * n_heads * 2
        at_once = max(1, RECOMPUTE_LAYER_BYTES // layer_bytes)
        image = self.image(info.id) if replay and trace.meta["inputs"].get("image") else None
        for start in range(0, len(replay), at_once):
            began = time.perf_counter()
            part = layers_maps(trace, replay[start:start + at_once], stack=stack, image=image,
                               map_dtype=torch.float16, pool=self.pool)
            seconds = time.perf_counter() - began
            for layer, result in part.items():
                out[layer] = pool_heads(layer, result.maps, side=side, source="recomputed", mismatch=result.mismatch)
                if len(replay) == 1 and layer_bytes <= RECOMPUTE_LAYER_BYTES:  # its Head page is one click away
                    self.cache.put((info.key, "recomputed", stack, layer), (result, seconds))
        return out

    # -- token view ---------------------------------------------------------------------------------
    def token_rows(self, bundle_id, position: int, stack: str = "text"):
        """TokenRows of one query position (stored maps when every layer has them, else recomputed)."""
        info = self.info(bundle_id)
        trace = self.trace(bundle_id)

        def compute():
            n_layers, n_heads = trace.n_layers(stack), trace.n_heads(stack)
            n = trace.dims["stacks"][stack]["positions"]
            stored = all(stored_map_heads(trace, stack, layer) == list(range(n_heads)) for layer in range(n_layers))
            if stored and (n <= 2048 or not self.allow_recompute):
                from workbench.app.data.recompute import TokenRows

                rows = torch.stack([trace.tensor(tensor_name(stack, layer, "maps"))[:, position].float()
                                    for layer in range(n_layers)])
                return TokenRows(rows, position, 0.0), "stored maps"
            if not self.allow_recompute:
                raise InputError("this bundle stores statistics only and the app runs with --no-recompute")
            image = self.image(info.id) if trace.meta["inputs"].get("image") else None
            return token_rows(trace, position, stack=stack, image=image, pool=self.pool), "a forward recomputed on the server"

        return self.cache.get_or_compute((info.key, "rows", stack, position), compute)

    # -- route view ---------------------------------------------------------------------------------
    def route_node_lens(self, bundle_id, node_id: str, watch: int | None = None):
        """A route node through the logit lens (`route_lens.NodeLens`: top tokens, rank of token id `watch`), one node
        per call, as the Token view's side panel asks for the node under the pointer; cached per bundle and node.
        The model's final norm and unembedding load by the bundle's model name like a recompute (refused with
        --no-recompute)."""
        from workbench.app.data.route_lens import lens_of, node_vectors

        info = self.info(bundle_id)
        trace = self.trace(bundle_id)
        if not self.allow_recompute:
            raise InputError("the app runs with --no-recompute, and a node's top tokens need the model's unembedding")

        def compute():
            vector = node_vectors(trace, [node_id])[node_id]  # a bundle without the decomposition says so before any load
            tracer, lock = self.pool.get(str(trace.model.get("name"))[:4096])
            with lock:
                return lens_of(node_id, vector, model=tracer, watch=watch)

        return self.cache.get_or_compute((info.key, "lens", node_id, watch), compute)

    # -- images -------------------------------------------------------------------------------------
    def image(self, bundle_id):
        """The bundle's input image (PIL RGB) when found under an allowed folder, else None."""
        info = self.info(bundle_id)
        if not info.image_sha256:
            return None
        trace = self.trace(bundle_id)
        return self.cache.get_or_compute((info.key, "image"), lambda: self.images.load(trace))

    def thumbnail(self, bundle_id, side: int = 56) -> str | None:
        info = self.info(bundle_id)
        if not info.ok or not info.image_sha256:
            return None

        def compute():
            image = self.image(bundle_id)
            return None if image is None else data_uri(model_view(image), max_side=side)

        return self.cache.get_or_compute((info.key, "thumbnail", side), compute)
