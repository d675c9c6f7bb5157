"""Head: the query x key map of one head (stored or recomputed), zoomable at any length, plus a line view."""

from __future__ import annotations

from dash import Input, Output, State, dcc, html, no_update
from workbench.app.clientside import ZOOM
from workbench.app.data.maps import window
from workbench.app.data.metrics import key_alpha, sink_keys
from workbench.app.data.tensors import n_positions, stat
from workbench.app.figures.common import message_figure, token_text
from workbench.app.figures.head import attention_map, head_statistics, line_view
from workbench.app.pages.common import (
    Page,
    as_int,
    bundle_picker,
    data,
    first,
    graph,
    guarded,
    guarded_layout,
    link,
    no_bundle,
    note,
    region_key,
    sel,
    stack_picker,
)

from workbench.traces.metrics import SINK_EPSILON

LINE_SPAN = 40


def positions_text(trace, stack: str) -> tuple[list[str], list[str]]:
    """Token texts and regions of a stack's positions (the vision tower: [CLS] then patch numbers)."""
    if stack == "text":
        return [t.text for t in trace.tokens], [t.region for t in trace.tokens]
    n = n_positions(trace, stack)
    return ["[CLS]"] + [f"patch {i}" for i in range(n - 1)], ["special"] + ["image"] * (n - 1)


def _options(count: int, prefix: str) -> list[dict]:
    return [{"label": f"{prefix} {i}", "value": i} for i in range(count)]


@guarded_layout
def layout(bundle=None, stack=None, layer=None, head=None, pos=None, **_):
    store = data()
    bundle = store.resolve(first(bundle))
    if bundle is None:
        return no_bundle()
    trace = store.trace(bundle)
    stack = first(stack) if first(stack) in trace.stacks else "text"
    n_layers, n_heads, n = trace.n_layers(stack), trace.n_heads(stack), n_positions(trace, stack)
    return html.Div([
        html.H2("Head view"),
        html.Div([
            bundle_picker(bundle, stack), stack_picker(trace, stack),
            dcc.Dropdown(id=sel("layer"), options=_options(n_layers, "layer"), value=as_int(layer, 0, 0, n_layers - 1),
                         clearable=False, className="wb-small"),
            dcc.Dropdown(id=sel("head"), options=_options(n_heads, "head"), value=as_int(head, 0, 0, n_heads - 1),
                         clearable=False, className="wb-small"),
            html.Label(["query ", dcc.Input(id=sel("pos"), type="number", min=0, max=n - 1, step=1, debounce=True,
                                            value=as_int(pos, n - 1, 0, n - 1), className="wb-num")]),
            dcc.RadioItems(id="head-scale", options=["linear", "log"], value="linear", inline=True),
        ], className="wb-controls"),
        html.Div(id="head-source"),
        region_key(),
        dcc.Store(id="head-view"),
        html.Div([
            html.Div([graph("head-map", message_figure("loading…"), loading=True),
                      html.Div(id="head-clicked", className="wb-muted",
                               children="Drag to zoom (served at full resolution when small enough); double-click "
                                        "to reset; click a cell to select its query.")], className="wb-col-main"),
            html.Div([graph("head-lines", message_figure("loading…"))], className="wb-col-side"),
        ], className="wb-columns"),
        graph("head-stats", message_figure("loading…")),
    ])


def register(app) -> None:
    app.clientside_callback(ZOOM, Output("head-view", "data"), Input("head-map", "relayoutData"),
                            Input(sel("bundle"), "value"), Input(sel("stack"), "value"), State("head-view", "data"),
                            prevent_initial_call=True)

    @app.callback(Output("head-map", "figure"), Output("head-source", "children"),
                  Input(sel("bundle"), "value"), Input(sel("stack"), "value"), Input(sel("layer"), "value"),
                  Input(sel("head"), "value"), Input("head-scale", "value"), Input("head-view", "data"),
                  Input(sel("pos"), "value"))
    @guarded("figure", "panel")
    def render(bundle, stack, layer, head, scale, view, pos):
        store, stack = data(), stack or "text"
        trace = store.trace(bundle)
        layer, head = as_int(layer, 0), as_int(head, 0)
        texts, regions = positions_text(trace, stack)
        head_map = store.head_map(bundle, stack, layer, head)
        view = view or {}
        win = window(head_map.values, view.get("q"), view.get("k"))
        sinks = sink_keys(trace, stack, layer, head)
        fig = attention_map(win, texts=texts, regions=regions, sink_keys=sinks, selected_query=as_int(pos),
                            scale=scale, uirevision=f"{bundle}|{stack}",
                            title=f"layer {layer}, head {head}" + (f" — max-pooled {win.q_step}x{win.k_step} "
                                                                   "blocks" if win.pooled else ""))
        notes = [note(head_map.note)]
        if head_map.warning:
            notes.append(note(head_map.warning, warning=True))
        return fig, notes

    @app.callback(Output("head-lines", "figure"), Output("head-stats", "figure"),
                  Input(sel("bundle"), "value"), Input(sel("stack"), "value"), Input(sel("layer"), "value"),
                  Input(sel("head"), "value"), Input(sel("pos"), "value"))
    @guarded("figure", "figure")
    def lines(bundle, stack, layer, head, pos):
        store, stack = data(), stack or "text"
        trace = store.trace(bundle)
        layer, head = as_int(layer, 0), as_int(head, 0)
        texts, regions = positions_text(trace, stack)
        n = len(texts)
        pos = as_int(pos, n - 1, 0, n - 1)
        alpha = key_alpha(trace, stack, layer)[head]
        entropy = stat(trace, stack, layer, "entropy")[head].double().numpy()
        stats_fig = head_statistics(alpha, entropy, texts=texts, regions=regions, threshold=SINK_EPSILON,
                                    title=f"statistics of layer {layer}, head {head} (stored in every bundle)")
        try:
            values = store.head_map(bundle, stack, layer, head).values
        except Exception:  # the map view already shows why; the statistics still help
            return message_figure("no map for the line view"), stats_fig
        start = max(0, min(pos - LINE_SPAN // 2, n - LINE_SPAN)) if n > LINE_SPAN else 0
        end = min(n, start + LINE_SPAN)
        weights = values[start:end, start:end].numpy()
        return line_view(weights, start=start, texts=texts, regions=regions, selected_query=pos,
                         title=f"positions {start}-{end - 1} (query {pos} highlighted)"), stats_fig

    @app.callback(Output(sel("pos"), "value"), Output("head-clicked", "children"), Input("head-map", "clickData"),
                  State(sel("bundle"), "value"), State(sel("stack"), "value"), State(sel("layer"), "value"),
                  State(sel("head"), "value"), prevent_initial_call=True)
    @guarded("skip", "panel")
    def click(click, bundle, stack, layer, head):
        if not click or not click.get("points"):
            return no_update, no_update
        point = click["points"][0]
        stack = stack or "text"
        trace = data().trace(bundle)
        texts, _ = positions_text(trace, stack)
        query, key = round(point["y"]), round(point["x"])
        if not (0 <= query < len(texts) and 0 <= key < len(texts)):
            return no_update, no_update
        weight = float(data().head_map(bundle, stack, as_int(layer, 0), as_int(head, 0)).values[query, key])
        info = html.Span([f"query {query} ", html.B(token_text(texts[query], 30)), f" → key {key} ",
                          html.B(token_text(texts[key], 30)), f": {weight:.4f} · ",
                          dcc.Link("open this token", href=link("/token", bundle=bundle, pos=query), id="head-to-token")
                          if stack == "text" else ""])
        return query, info


PAGE = Page(module="workbench.app.pages.head", path="/head", name="Head", order=2, layout=layout, register=register,
            params=("bundle", "stack", "layer", "head", "pos"), description="query x key map of one head")
