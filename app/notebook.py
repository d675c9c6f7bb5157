"""The app's views for notebooks: a `Trace` (or an analysis result) in, a plotly `go.Figure` out.

Each function does what the matching app callback does, slice the trace on the server side (`app.data`) and
hand arrays to the same pure builder (`app.figures`), so a notebook shows exactly what the app shows.

    >>> import workbench
    >>> from workbench.app import notebook
    >>> t = workbench.trace("tiny-gpt2", "The cat sat on the mat", maps="0:all")
    >>> notebook.model_view(t, "sink").data[0].z.shape          # [layer, head]
    (3, 4)
    >>> notebook.head_view(t, 0, 1).layout.title.text
    'layer 0, head 1 (stored map)'
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import plotly.graph_objects as go

from workbench.errors import InputError


def metrics(trace, stack: str = "text") -> dict:
    """The layer x head metrics the app's Model view offers, by name: `Metric` with values [layer, head]."""
    from workbench.app.data.metrics import statistics_metrics

    return statistics_metrics(trace, stack)


def _metric(trace, name: str, stack: str):
    found = metrics(trace, stack)
    if name not in found:
        raise InputError(f"no metric {name!r} for this trace; have {', '.join(found)}")
    return found[name]


def model_view(trace, metric: str = "sink", *, stack: str = "text") -> go.Figure:
    """Model view: one layer x head heatmap of `metric` (names: `metrics(trace)`, e.g. sink, entropy, lookback)."""
    from workbench.app.figures.model import head_grid

    chosen = _metric(trace, metric, stack)
    return head_grid(chosen.values, label=chosen.label, zmin=chosen.zmin, zmax=chosen.zmax,
                     colorscale=chosen.colorscale, title=f"{chosen.label} ({stack} stack)")


def layer_view(trace, names=("sink", "entropy"), *, stack: str = "text", title: str | None = None) -> go.Figure:
    """Per-layer curves (mean over heads, min-max band) of metrics; entropy goes on a right-hand axis."""
    from workbench.app.figures.model import layer_curves

    curves = {name: _metric(trace, name, stack).values for name in names}
    return layer_curves(curves, title=title or "per layer (mean over heads, min-max band)",
                        secondary=tuple(n for n in names if n.startswith("entropy")))


def head_view(trace, layer: int, head: int, *, stack: str = "text", scale: str = "linear", model=None, image=None,
              queries: tuple[int, int] | None = None, keys: tuple[int, int] | None = None) -> go.Figure:
    """Head view: the query x key map of one head, stored in the trace or recomputed with `model` (one forward;
    the bundle's own model name when None; `image` a PIL image for VLM traces). Long maps are max-pooled."""
    from workbench.app.data.maps import window
    from workbench.app.data.metrics import sink_keys
    from workbench.app.data.recompute import layer_maps
    from workbench.app.data.tensors import read_first_axis, stored_map_heads, tensor_name
    from workbench.app.figures.head import attention_map

    stored = stored_map_heads(trace, stack, layer)
    if head in stored:
        values, source = read_first_axis(trace, tensor_name(stack, layer, "maps"), stored.index(head)).float(), "stored"
    else:
        values, source = layer_maps(trace, layer, stack=stack, heads=[head], model=model, image=image).maps[0], \
            "recomputed"
    texts, regions = _positions(trace, stack)
    sinks = sink_keys(trace, stack, layer, head)
    win = window(values, queries, keys)
    pooled = f", max-pooled {win.q_step}x{win.k_step}" if win.pooled else ""
    return attention_map(win, texts=texts, regions=regions, sink_keys=sinks, scale=scale,
                         title=f"layer {layer}, head {head} ({source} map{pooled})")


def _positions(trace, stack: str) -> tuple[list[str], list[str]]:
    if stack == "text":
        return [t.text for t in trace.tokens], [t.region for t in trace.tokens]
    n = trace.dims["stacks"][stack]["positions"]
    return ["[CLS]"] + [f"patch {i}" for i in range(1, n)], ["special"] + ["image"] * (n - 1)


def image_view(trace, values=None, *, image=None, label: str = "alpha (mean attention received)",
               marked=(), title: str | None = None) -> go.Figure:
    """Image view: one value per image token drawn over its patch. values: [image tokens] in position order
    (None: Gu's alpha averaged over layers and heads); image: a PIL image or path; marked: (row, col) patches."""
    from workbench.app.data.images import data_uri
    from workbench.app.data.images import model_view as square
    from workbench.app.data.metrics import key_alpha
    from workbench.app.figures.image import patch_overlay

    patches = [(t.i, t.patch) for t in trace.tokens if t.region == "image" and t.patch]
    if not patches:
        raise InputError("this trace has no image tokens with a patch grid; trace a vision-language model")
    positions = [p for p, _ in patches]
    if values is None:
        values = np.mean([key_alpha(trace, "text", layer)[:, positions].mean(0)
                          for layer in range(trace.n_layers())], axis=0)
    values = np.asarray(values, dtype=np.float64)
    if values.shape != (len(patches),):
        raise InputError(f"values must hold one number per image token ({len(patches)}), got shape {values.shape}")
    rows, cols = max(p[0] for _, p in patches) + 1, max(p[1] for _, p in patches) + 1
    grid, where = np.full((rows, cols), np.nan), np.full((rows, cols), -1)
    for value, (position, (row, col)) in zip(values, patches):
        grid[row, col], where[row, col] = value, position
    uri = None
    if image is not None:
        from workbench.images import open_rgb

        picture = image if hasattr(image, "size") else open_rgb(Path(image).read_bytes(), what=str(image))[0]
        uri = data_uri(square(picture), max_side=336)
    return patch_overlay(grid, image_uri=uri, marked=list(marked), label=label, positions=where, title=title)


def route_view(result, position: int | None = None, *, trace, threshold: float | None = None, model=None,
               width: int = 1000, title: str | None = None) -> go.Figure:
    """The information-flow route of one prediction (a `routes.analyse` result), drawn as the Token view draws it:
    x = token, y = layer, edges of contribution >= threshold (None: the result's tau) that still reach the
    prediction. model (a LoadedModel or Tracer): hover each node with its top tokens under the logit lens, read
    for every node up front (about 1 ms per node on a 49k vocabulary: meant for small routes; without it the
    figure draws at once, and `route_lens.node_lens` reads one node). width: pixels (fixed, so token labels are
    thinned to what that width holds)."""
    from workbench.app.data.results import graph_of
    from workbench.app.data.route_lens import node_tokens
    from workbench.app.figures.routes import route_at, route_figure

    route = result.routes[0] if position is None else result.route(position)
    graph = graph_of(route.graph).value
    threshold = float(result.options.get("threshold", 0.0)) if threshold is None else float(threshold)
    lens, note = None, "pass model= to route_view for each node's top tokens"
    if model is not None:
        lens = node_tokens(trace, [node["id"] for node in route_at(graph, route.output, threshold).nodes], model=model)
    predicted = (route.predicted or {}).get("text", "?")
    return route_figure(graph, texts=[t.text for t in trace.tokens], n_layers=trace.n_layers(), root=route.output,
                        threshold=threshold, lens=lens, lens_note=note, width=width,
                        title=title or f"route of the prediction at row {route.position} (predicts {predicted!r})")


def circuit_view(result, *, top_k: int = 40, min_weight: float = 0.0, n_layers: int | None = None,
                 n_heads: int | None = None, title: str | None = None) -> go.Figure:
    """The head-to-head graph of a `circuits.analyse` result, drawn as the Circuits view draws it: the `top_k`
    heaviest edges (0 = all) of weight >= min_weight and the heads they join, x = layer, y = head (axes span
    n_layers x n_heads when given, e.g. `trace.n_layers()`, else the graph's heads)."""
    from workbench.app.data.results import graph_of
    from workbench.app.figures.circuits import circuit_figure

    return circuit_figure(graph_of(result.graph).value, top_k=top_k, min_weight=min_weight, n_layers=n_layers,
                          n_heads=n_heads, title=title)
