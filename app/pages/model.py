"""Model: layer x head heatmaps of any per-head metric, per-layer curves; click a cell to open that head."""

from __future__ import annotations

from dash import Input, Output, State, dcc, html
from workbench.app.clientside import OPEN_HEAD_FROM_GRID
from workbench.app.figures.common import message_figure
from workbench.app.figures.model import head_grid, layer_curves
from workbench.app.pages.common import (
    Page,
    as_int,
    bundle_picker,
    data,
    first,
    graph,
    guarded,
    guarded_layout,
    hint_panel,
    no_bundle,
    note,
    sel,
    stack_picker,
)

DEFAULT_METRIC = "sink"


def bundle_summary(info, trace) -> html.Div:
    checks = trace.checks
    healthy = checks.get("healthy", True)
    stacks = "; ".join(f"{name}: {d['layers']} layers x {d['heads']} heads ({d['kv_heads']} kv)"
                       for name, d in trace.dims["stacks"].items())
    return html.Div([
        html.Div([html.B(info.model), f" ({info.kind}) · {info.tokens} tokens · {stacks}"]),
        html.Div([html.Span("prompt: ", className="wb-muted"), info.prompt[:300]]),
        html.Div([html.Span("generated: ", className="wb-muted"), info.generated[:300]]),
        html.Div("numerics: healthy" if healthy else
                 f"numerics check FAILED: max |Z - 1| = {checks.get('max_normaliser_error')}, non-finite values "
                 f"{checks.get('non_finite')} (see `workbench info`)", className="wb-muted" if healthy else "wb-bad"),
    ], className="wb-summary", id="model-summary")


def metric_options(metrics: dict) -> list[dict]:
    options = []
    for name, metric in metrics.items():
        label = metric.label + ("" if metric.available else "  — not in this bundle")
        options.append({"label": label, "value": name})
    return options


@guarded_layout
def layout(bundle=None, stack=None, metric=None, layer=None, head=None, **_):
    store = data()
    bundle = store.resolve(first(bundle))
    if bundle is None:
        return no_bundle()
    trace = store.trace(bundle)
    stack = first(stack) if first(stack) in trace.stacks else "text"
    metrics, _ = store.metrics(bundle, stack)
    metric = first(metric) if first(metric) in metrics else DEFAULT_METRIC
    return html.Div([
        html.H2("Model view"),
        html.Div([bundle_picker(bundle, stack), stack_picker(trace, stack),
                  dcc.Dropdown(id="model-metric", options=metric_options(metrics), value=metric, clearable=False,
                               className="wb-metric")], className="wb-controls"),
        dcc.Store(id="model-selected", data=[as_int(layer), as_int(head)]),
        bundle_summary(store.info(bundle), trace),
        html.Div(id="model-message"),
        html.Div([
            html.Div(graph("model-grid", message_figure("loading…")), className="wb-col-main"),
            html.Div([graph("model-curves", message_figure("loading…")),
                      html.P("Click a cell of the heatmap to open that head.", className="wb-muted")],
                     className="wb-col-side"),
        ], className="wb-columns"),
        html.Div(id="model-basin"),
    ])


def basin_panel(bundle) -> list:
    """The attention per list item of results/basin.json (`workbench basin`), or nothing when it has none."""
    from workbench.app.data import results as results_mod
    from workbench.app.figures.basin import basin_profile

    found = results_mod.find(data().trace(bundle).results, "basin") if bundle else None
    if found is None:
        return []
    warnings = [note(w, warning=True) for w in found.warnings]
    if found.result is None:
        return warnings
    result, tokens = found.result, data().trace(bundle).tokens
    texts = ["".join(t.text for t in tokens[item["tokens"][0]:item["tokens"][1]]) for item in result.items]
    figure = basin_profile(result.profile, result.layer_profile, result.items, u_score=result.u_score,
                           per=result.options.get("per", "item"), texts=texts)
    return warnings + [graph("model-basin-profile", figure),
                       html.P(f"Attention basin: query rows {result.rows[0]}-{result.rows[1] - 1} on each list item "
                              "(user spans); U-score > 0 when both ends get more than the middle. Per-head U-scores: "
                              "the metric menu above.", className="wb-muted")]


def register(app) -> None:
    @app.callback(Output("model-grid", "figure"), Output("model-curves", "figure"), Output("model-message", "children"),
                  Input(sel("bundle"), "value"), Input(sel("stack"), "value"), Input("model-metric", "value"),
                  State("model-selected", "data"))
    @guarded("figure", "figure", "panel")
    def render(bundle, stack, name, selected):
        metrics, warnings = data().metrics(bundle, stack or "text")
        metric = metrics.get(name) or metrics[DEFAULT_METRIC]
        messages = [note(w, warning=True) for w in warnings]
        curves = {"entropy": metrics["entropy"].values} if "entropy" in metrics else {}
        if not metric.available:
            messages.insert(0, hint_panel(metric.hint or "not available"))
            return message_figure(metric.hint or "not available"), layer_curves(curves, title="per-layer curves"), messages
        if metric.name != "entropy":
            curves = {metric.label: metric.values, **curves}
        cell = tuple(selected) if isinstance(selected, list) and None not in selected and len(selected) == 2 else None
        grid = head_grid(metric.values, label=metric.label, zmin=metric.zmin, zmax=metric.zmax,
                         colorscale=metric.colorscale, selected=cell,
                         title=f"{metric.label} — {stack or 'text'} stack")
        messages.insert(0, html.Div(metric.description, className="wb-muted"))
        secondary = ("entropy",) if metric.name != "entropy" else ()
        return grid, layer_curves(curves, title="per layer (mean over heads, min-max band)",
                                  secondary=secondary), messages

    @app.callback(Output("model-basin", "children"), Input(sel("bundle"), "value"))
    @guarded("panel")
    def render_basin(bundle):
        return basin_panel(bundle)

    app.clientside_callback(OPEN_HEAD_FROM_GRID, Output("wb-nav", "href", allow_duplicate=True),
                            Input("model-grid", "clickData"), State(sel("bundle"), "value"),
                            State(sel("stack"), "value"), prevent_initial_call=True)


PAGE = Page(module="workbench.app.pages.model", path="/model", name="Model", order=1, layout=layout,
            register=register, params=("bundle", "stack"), description="layer x head metric heatmaps",
            needs=("vhd", "routes", "probe", "sinks"))
