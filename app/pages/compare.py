"""Compare: two bundles A and B side by side and as differences (B - A): per-head metrics, per-layer profiles,
token curves, and one head's attention maps. What does not align (other grids, other lengths) is said, not drawn."""

from __future__ import annotations

from dash import Input, Output, State, dcc, html
from workbench.app.data import compare as cmp
from workbench.app.data.maps import window
from workbench.app.figures.common import message_figure
from workbench.app.figures.compare import layer_profiles, map_comparison, metric_comparison, token_curves
from workbench.app.pages.common import (
    Page,
    as_int,
    data,
    describe_error,
    error_panel,
    first,
    graph,
    guarded,
    guarded_layout,
    health_warning,
    hint_panel,
    link,
    no_bundle,
    note,
)

from workbench.errors import InputError, WorkbenchError

DEFAULT_METRIC = "sink"
MAP_CELLS = 150  # per panel: a map panel is about 300 px wide, so two pixels per cell
STACK = "text"

# A new A or B rebuilds the page (its layer and head lists depend on both); Dash fires this when the page
# inserts its dropdowns, so it compares with what the page was built for.
REOPEN = """
function(a, b, built) {
    if (!a || !b || (built && built.a === a && built.b === b)) { return dash_clientside.no_update; }
    return "/compare?" + new URLSearchParams({a: a, b: b}).toString();
}
"""


def other_bundle(store, bundle: str | None) -> str | None:
    """The newest readable bundle other than `bundle` (B's default)."""
    others = [info for info in store.catalog.scan() if info.ok and info.id != bundle]
    return max(others, key=lambda info: (info.created, info.id)).id if others else None


def pair(store, a, b):
    """(trace A, trace B, Alignment) of two bundle ids; a user-facing error when they cannot be compared."""
    trace_a, trace_b = store.trace(a), store.trace(b)
    for name, trace in (("A", trace_a), ("B", trace_b)):
        if STACK not in trace.stacks:
            raise InputError(f"bundle {name} has no text stack (only {', '.join(trace.stacks)}); the Compare page "
                             "compares language-model attention")
    return trace_a, trace_b, cached(store, a, b, "alignment", lambda: cmp.align(trace_a, trace_b, STACK))


def cached(store, a, b, name: str, compute):
    """A value derived from both bundles, cached under both bundles' keys (a replaced bundle is never stale)."""
    return store.cache.get_or_compute((store.info(a).key, store.info(b).key, "compare", name), compute)


def curve(store, bundle, quantity, layer, head):
    """A token curve of one bundle, cached under that bundle (shared by every pair it is part of)."""
    trace = store.trace(bundle)
    return store.cache.get_or_compute((store.info(bundle).key, "token-curve", quantity, layer, head),
                                      lambda: cmp.token_curve(trace, quantity, layer=layer, head=head, stack=STACK))


def describe(store, key: str, bundle: str) -> html.Div:
    info = store.info(bundle)
    return html.Div([html.B(f"{key}: "), dcc.Link(bundle, href=link("/model", bundle=bundle)),
                     f" · {info.model} · {info.tokens} tokens · ",
                     html.Span(f"prompt: {info.prompt[:140]}", className="wb-muted"),
                     html.Span(f" · generated: {info.generated[:100]}", className="wb-muted")],
                    id=f"compare-about-{key.lower()}")


def _options(count: int, prefix: str) -> list[dict]:
    return [{"label": f"{prefix} {i}", "value": i} for i in range(count)]


def pair_health_warning(a: str, b: str):
    """The shell's numerics warning for either bundle of the pair, as one block (the shell shows one id per page)."""
    found = [(name, health_warning(bundle)) for name, bundle in (("A", a), ("B", b))]
    found = [(name, warning) for name, warning in found if warning is not None]
    if not found:
        return None
    return html.Div([html.Div([html.Strong(f"{name}: "), *warning.children]) for name, warning in found],
                    id="wb-health", className="wb-warning", role="alert")


@guarded_layout
def layout(a=None, b=None, bundle=None, metric=None, layer=None, head=None, **_):
    store = data()
    a = store.resolve(first(a) or first(bundle))
    if a is None:
        return no_bundle()
    b = first(b) if first(b) in store.catalog.ids() else other_bundle(store, a)
    if b is None:
        return html.Div([html.H2("Compare two bundles"),
                         hint_panel("Comparing needs two readable bundles; there is only one. Trace another input on "
                                    "the Runs page (e.g. the same prompt with an image, or with --intervene)."),
                         dcc.Link("go to the runs", href="/")])
    choices = [{"label": f"{info.id} · {info.model} · {info.tokens} tokens", "value": info.id}
               for info in store.catalog.scan() if info.ok]
    pickers = html.Div([
        html.Label(["A ", dcc.Dropdown(id="compare-a", options=choices, value=a, clearable=False)], className="wb-bundle"),
        html.Label(["B ", dcc.Dropdown(id="compare-b", options=choices, value=b, clearable=False)], className="wb-bundle"),
        dcc.Link("swap A and B", href=link("/compare", a=b, b=a), id="compare-swap"),
        dcc.Store(id="compare-built", data={"a": a, "b": b}),
    ], className="wb-controls")
    try:
        _, _, aligned = pair(store, a, b)
    except Exception as error:  # noqa: BLE001 - the pickers stay usable to choose another pair
        return html.Div([html.H2("Compare two bundles"), pickers, error_panel(describe_error(error))])
    metrics_a, _ = store.metrics(a, STACK)
    metrics_b, _ = store.metrics(b, STACK)
    common = [name for name, m in metrics_a.items() if m.available and name in metrics_b and metrics_b[name].available]
    metric = first(metric) if first(metric) in common else DEFAULT_METRIC if DEFAULT_METRIC in common else common[0]
    n_layers = max(aligned.grid_a[0], aligned.grid_b[0])
    n_heads = max(aligned.grid_a[1], aligned.grid_b[1])
    quantities = [{"label": label, "value": name} for name, (label, _) in cmp.TOKEN_QUANTITIES.items()]
    return html.Div([
        html.H2("Compare two bundles"),
        pickers,
        pair_health_warning(a, b),
        html.Div([describe(store, "A", a), describe(store, "B", b)]
                 + [html.Div("• " + text, className="wb-muted") for text in aligned.notes()],
                 className="wb-summary", id="compare-summary"),
        html.H3("Per-head metrics"),
        html.Div([dcc.Dropdown(id="compare-metric", value=metric, clearable=False, className="wb-metric",
                               options=[{"label": metrics_a[name].label, "value": name} for name in common])],
                 className="wb-controls"),
        html.Div(id="compare-metric-message"),
        graph("compare-metric-grid", message_figure("loading…")),
        graph("compare-profile", message_figure("loading…")),
        html.H3("Token curves"),
        html.Div([dcc.RadioItems(id="compare-quantity", options=quantities, value="received", inline=True),
                  dcc.RadioItems(id="compare-scope", inline=True, value="all", options=[
                      {"label": "mean over every layer and head", "value": "all"},
                      {"label": "selected layer (mean over heads)", "value": "layer"},
                      {"label": "selected head", "value": "head"}])], className="wb-controls"),
        html.Div(id="compare-curves-message"),
        graph("compare-curves", message_figure("loading…")),
        html.H3("One head's attention map"),
        html.Div([dcc.Dropdown(id="compare-layer", options=_options(n_layers, "layer"), clearable=False,
                               value=as_int(layer, min(3, n_layers - 1), 0, n_layers - 1), className="wb-small"),
                  dcc.Dropdown(id="compare-head", options=_options(n_heads, "head"), clearable=False,
                               value=as_int(head, 0, 0, n_heads - 1), className="wb-small")], className="wb-controls"),
        html.Div(id="compare-maps-message"),
        graph("compare-maps", message_figure("loading…"), loading=True),
    ])


# -- the views (plain functions: the callbacks and benchmarks/app_speed.py call them) ----------------------
def metric_view(a: str, b: str, name: str):
    """(metric figure, per-layer profile figure, messages) for metric `name` of A and B."""
    store = data()
    _, _, aligned = pair(store, a, b)
    metrics_a, warnings_a = store.metrics(a, STACK)
    metrics_b, warnings_b = store.metrics(b, STACK)
    metric_a, metric_b = metrics_a.get(name), metrics_b.get(name)
    messages = [note(f"A: {w}", warning=True) for w in warnings_a] + [note(f"B: {w}", warning=True) for w in warnings_b]
    for key, found in (("A", metric_a), ("B", metric_b)):
        if found is None or not found.available:
            hint = found.hint if found is not None else f"bundle {key} has no metric {name!r}"
            return message_figure(hint or "not available"), message_figure(""), [hint_panel(hint or "")] + messages
    difference = cmp.metric_difference(metric_a.values, metric_b.values)
    names = (a, b)
    grid = metric_comparison(metric_a.values, metric_b.values, difference, label=metric_a.label, names=names,
                             zmin=metric_a.zmin, zmax=metric_a.zmax, colorscale=metric_a.colorscale,
                             reason=aligned.grid_reason(), title=f"{metric_a.label}: A, B and B − A")
    profile = layer_profiles(cmp.layer_profile(metric_a.values), cmp.layer_profile(metric_b.values),
                             label=metric_a.label, names=names, title=f"{metric_a.label} per layer, mean over heads")
    messages.insert(0, html.Div(metric_a.description, className="wb-muted"))
    if aligned.grid_reason():
        messages.insert(0, note(aligned.grid_reason(), warning=True))
    return grid, profile, messages


def curves_view(a: str, b: str, quantity: str, scope: str, layer, head):
    """(token curves figure, messages)."""
    store = data()
    trace_a, trace_b, aligned = pair(store, a, b)
    quantity = quantity if quantity in cmp.TOKEN_QUANTITIES else "received"
    layer = as_int(layer, 0) if scope in ("layer", "head") and quantity != "probability" else None
    head = as_int(head, 0) if scope == "head" and quantity != "probability" else None
    for key, grid in (("A", aligned.grid_a), ("B", aligned.grid_b)):
        if layer is not None and not (0 <= layer < grid[0] and (head is None or 0 <= head < grid[1])):
            what = f"layer {layer}" + ("" if head is None else f" head {head}")
            message = f"bundle {key} has no {what} ({grid[0]} layers x {grid[1]} heads): pick another, or the mean"
            return message_figure(message), [hint_panel(message)]
    values_a, values_b, _ = cmp.paired(curve(store, a, quantity, layer, head), curve(store, b, quantity, layer, head),
                                       aligned.pairs)
    label, description = cmp.TOKEN_QUANTITIES[quantity]
    where = ("" if quantity == "probability" else " — mean over every layer and head" if layer is None else
             f" — layer {layer}, mean over heads" if head is None else f" — layer {layer}, head {head}")
    fig = token_curves(values_a, values_b, aligned.pairs, texts_a=[t.text for t in trace_a.tokens],
                       texts_b=[t.text for t in trace_b.tokens], label=label, names=(a, b), mode=aligned.mode,
                       title=f"{label}{where}")
    messages = [html.Div(description + "; B − A below, at aligned positions.", className="wb-muted")]
    if not aligned.same_model and layer is not None:
        messages.append(note("different models: a layer or head index names a different head in each", warning=True))
    return fig, messages


def maps_view(a: str, b: str, layer, head):
    """(maps figure, messages): the head's map in A and B, and B - A when the sequences align."""
    store = data()
    trace_a, trace_b, aligned = pair(store, a, b)
    layer, head = as_int(layer, 0), as_int(head, 0)
    maps, messages, missing = {}, [], {}
    for key, bundle, grid in (("A", a, aligned.grid_a), ("B", b, aligned.grid_b)):
        if not (0 <= layer < grid[0] and 0 <= head < grid[1]):
            missing[key] = f"{key} has no layer {layer} head {head} ({grid[0]} layers x {grid[1]} heads)"
            messages.append(note(missing[key], warning=True))
            continue
        try:
            found = store.head_map(bundle, STACK, layer, head)
        except WorkbenchError as error:  # the other bundle's map still shows
            missing[key] = f"no map for {key}: {error}"
            messages.append(note(missing[key], warning=True))
            continue
        maps[key] = found.values
        messages.append(note(f"{key}: {found.note}"))
        if found.warning:
            messages.append(note(f"{key}: {found.warning}", warning=True))
    reason = aligned.map_reason()
    diff = None
    if reason is None and len(maps) == 2:
        diff = cmp.signed_window(cmp.map_difference(maps["A"], maps["B"]), max_cells=MAP_CELLS)
        if not aligned.same_tokens:
            messages.append(note(f"the sequences have the same length but {aligned.differing} positions hold other "
                                 "tokens: the difference compares positions, not tokens", warning=True))
    elif reason:
        messages.append(note(reason, warning=True))
    fig = map_comparison(window(maps["A"], max_cells=MAP_CELLS) if "A" in maps else None,
                         window(maps["B"], max_cells=MAP_CELLS) if "B" in maps else None, diff,
                         texts_a=[t.text for t in trace_a.tokens], texts_b=[t.text for t in trace_b.tokens],
                         head=(layer, head), names=(a, b), reason=reason,
                         missing=(missing.get("A"), missing.get("B")))
    return fig, messages


def register(app) -> None:
    app.clientside_callback(REOPEN, Output("wb-nav", "href", allow_duplicate=True), Input("compare-a", "value"),
                            Input("compare-b", "value"), State("compare-built", "data"), prevent_initial_call=True)

    @app.callback(Output("compare-metric-grid", "figure"), Output("compare-profile", "figure"),
                  Output("compare-metric-message", "children"), Input("compare-metric", "value"),
                  State("compare-built", "data"))
    @guarded("figure", "figure", "panel")
    def render_metric(name, built):
        return metric_view(built["a"], built["b"], name or DEFAULT_METRIC)

    @app.callback(Output("compare-curves", "figure"), Output("compare-curves-message", "children"),
                  Input("compare-quantity", "value"), Input("compare-scope", "value"), Input("compare-layer", "value"),
                  Input("compare-head", "value"), State("compare-built", "data"))
    @guarded("figure", "panel")
    def render_curves(quantity, scope, layer, head, built):
        return curves_view(built["a"], built["b"], quantity, scope, layer, head)

    @app.callback(Output("compare-maps", "figure"), Output("compare-maps-message", "children"),
                  Input("compare-layer", "value"), Input("compare-head", "value"), State("compare-built", "data"))
    @guarded("figure", "panel")
    def render_maps(layer, head, built):
        return maps_view(built["a"], built["b"], layer, head)


PAGE = Page(module="workbench.app.pages.compare", path="/compare", name="Compare", order=8, layout=layout,
            register=register, params=("bundle",), description="two bundles side by side and as a difference")
