"""Heads: every head of a layer at once (small multiples of their attention maps), or every layer zoomed out.

Each map is pooled on the server to at most 64 x 64 blocks (block maximum) and sent as a PNG, so 30 layers x
9 heads at thousands of tokens is a few hundred kB; clicking a thumbnail opens that head's Head page.
"""

from __future__ import annotations

from dash import Input, Output, dcc, html
from workbench.app.data.tensors import n_positions
from workbench.app.data.thumbnails import THUMBNAIL_SIDE, LayerThumbnails
from workbench.app.figures.thumbnails import thumbnail_uri
from workbench.app.pages.common import (
    Page,
    as_int,
    bundle_picker,
    data,
    first,
    guarded,
    guarded_layout,
    link,
    no_bundle,
    note,
    sel,
    stack_picker,
)

ALL_LAYERS_SIDE = 32  # the all-layers view draws 270 thumbnails: half the side, a quarter of the bytes
LAYER_PIXELS, ALL_LAYERS_PIXELS = 136, 46  # displayed size (the browser scales the PNG up, pixels kept sharp)
PIXELATED = {"imageRendering": "pixelated", "border": "1px solid #d1d5db", "background": "#fff", "display": "block"}


def _layer_options(count: int) -> list[dict]:
    return [{"label": f"layer {i}", "value": i} for i in range(count)]


@guarded_layout
def layout(bundle=None, stack=None, layer=None, scope=None, **_):
    store = data()
    bundle = store.resolve(first(bundle))
    if bundle is None:
        return no_bundle()
    trace = store.trace(bundle)
    stack = first(stack) if first(stack) in trace.stacks else "text"
    n_layers = trace.n_layers(stack)
    return html.Div([
        html.H2("Every head"),
        html.Div([
            bundle_picker(bundle, stack), stack_picker(trace, stack),
            dcc.RadioItems(id="heads-scope", options=[{"label": "one layer", "value": "layer"},
                                                      {"label": "all layers", "value": "all"}],
                           value="all" if first(scope) == "all" else "layer", inline=True),
            dcc.Dropdown(id=sel("layer"), options=_layer_options(n_layers), value=as_int(layer, 0, 0, n_layers - 1),
                         clearable=False, className="wb-small"),
        ], className="wb-controls"),
        html.Div(id="heads-note"),
        dcc.Loading(html.Div(id="heads-grid"), type="circle", delay_show=400),
    ])


def _thumbnail(bundle: str, stack: str, layer: int, head: int, pooled, pixels: int, caption: bool) -> dcc.Link:
    uri, limit = thumbnail_uri(pooled)
    image = html.Img(src=uri, className="wb-head-thumb", width=pixels, height=pixels, style=PIXELATED,
                     title=f"layer {layer}, head {head}: darkest = weight {limit:.3g} or more; click to open")
    children = [image, html.Div(f"L{layer}H{head}", className="wb-muted")] if caption else [image]
    return dcc.Link(children, href=link("/head", bundle=bundle, stack=stack, layer=layer, head=head),
                    id={"type": "heads-thumb", "layer": layer, "head": head}, style={"textDecoration": "none"})


def layer_grid(bundle: str, stack: str, thumbs: LayerThumbnails) -> html.Div:
    """Every head of one layer, captioned LxHy, in rows that wrap with the window."""
    return html.Div([_thumbnail(bundle, stack, thumbs.layer, head, pooled, LAYER_PIXELS, True)
                     for head, pooled in enumerate(thumbs.pooled)],
                    style={"display": "flex", "flexWrap": "wrap", "gap": "10px"}, id="heads-layer-grid")


def model_grid(bundle: str, stack: str, layers: list[LayerThumbnails]) -> html.Div:
    """Every layer (rows, layer 0 on top) x every head (columns): the zoomed-out model view."""
    header = html.Div([html.Span("", style={"width": "64px"})] + [
        html.Span(f"H{head}", className="wb-muted", style={"width": f"{ALL_LAYERS_PIXELS + 2}px", "textAlign": "center"})
        for head in range(len(layers[0].pooled))], style={"display": "flex", "gap": "3px"})
    rows = [html.Div([html.Span(f"layer {thumbs.layer}", className="wb-muted", style={"width": "64px"})] + [
        _thumbnail(bundle, stack, thumbs.layer, head, pooled, ALL_LAYERS_PIXELS, False)
        for head, pooled in enumerate(thumbs.pooled)], style={"display": "flex", "gap": "3px", "alignItems": "center",
                                                               "marginBottom": "3px"})
        for thumbs in layers]
    return html.Div([header, *rows], id="heads-model-grid")


def describe(thumbs: list[LayerThumbnails], n: int) -> str:
    """Where the maps came from and how they were pooled, in one line."""
    sources = sorted({t.source for t in thumbs})
    step = thumbs[0].step
    pooled = (f"each pixel is the maximum over {step} x {step} positions" if step > 1 else
              "one pixel per (query, key) position")
    text = (f"{n} positions; {pooled}; query rows top to bottom, keys left to right; each thumbnail has its own "
            f"colour scale (hover one for its darkest weight). Maps: {' and '.join(sources)}")
    mismatch = [t.mismatch for t in thumbs if t.mismatch == t.mismatch]
    if mismatch:
        text += f" (recomputed on the server; max relative key-mass difference to the stored statistics {max(mismatch):.1e})"
    return text + ". Click a head to open it."


def register(app) -> None:
    # the layer picker means nothing while every layer is shown (in the browser: no server round trip)
    app.clientside_callback("function(scope) { return scope === 'all'; }", Output(sel("layer"), "disabled"),
                            Input("heads-scope", "value"))

    @app.callback(Output("heads-grid", "children"), Output("heads-note", "children"),
                  Input(sel("bundle"), "value"), Input(sel("stack"), "value"), Input(sel("layer"), "value"),
                  Input("heads-scope", "value"))
    @guarded("panel", "none")
    def render(bundle, stack, layer, scope):
        store, stack = data(), stack or "text"
        trace = store.trace(bundle)
        n_layers = trace.n_layers(stack)
        n = n_positions(trace, stack)
        if scope == "all":
            layers = store.thumbnails(bundle, stack, range(n_layers), ALL_LAYERS_SIDE)
            return model_grid(bundle, stack, layers), note(describe(layers, n))
        layer = as_int(layer, 0, 0, n_layers - 1)
        [thumbs] = store.thumbnails(bundle, stack, [layer], THUMBNAIL_SIDE)
        return layer_grid(bundle, stack, thumbs), note(describe([thumbs], n))


PAGE = Page(module="workbench.app.pages.heads", path="/heads", name="Heads", order=2, layout=layout, register=register,
            params=("bundle", "stack", "layer"), description="every head of a layer (or of the model) at once")
