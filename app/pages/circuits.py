"""Circuits: the SVD head-to-head communication graph (Franco & Crovella 2024), from results/circuits.json."""

from __future__ import annotations

from dash import Input, Output, State, dcc, html
from workbench.app.data import results as results_mod
from workbench.app.figures.circuits import DEFAULT_TOP_K, TOP_K_CHOICES, circuit_figure
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
)

# A click on a head (the node trace carries customdata [layer, head]; edge markers carry none) opens it.
OPEN_HEAD_FROM_CIRCUIT = """
function(click, bundle) {
    if (!click || !click.points || !click.points.length) { return dash_clientside.no_update; }
    const data = click.points[0].customdata;
    if (!Array.isArray(data) || data.length !== 2) { return dash_clientside.no_update; }
    const query = new URLSearchParams({bundle: bundle, stack: "text", layer: data[0], head: data[1]});
    return "/head?" + query.toString();
}
"""


def top_k_options() -> list[dict]:
    return [{"label": str(k) if k else "all", "value": k} for k in TOP_K_CHOICES]


@guarded_layout
def layout(bundle=None, top=None, **_):
    store = data()
    bundle = store.resolve(first(bundle))
    if bundle is None:
        return no_bundle()
    top_k = as_int(top, DEFAULT_TOP_K)
    top_k = top_k if top_k in TOP_K_CHOICES else DEFAULT_TOP_K
    return html.Div([
        html.H2("Circuits"),
        html.Div([bundle_picker(bundle),
                  html.Span("strongest edges:", className="wb-muted"),
                  dcc.RadioItems(id="circuits-top", options=top_k_options(), value=top_k, inline=True)],
                 className="wb-controls"),
        html.Div(id="circuits-body"),
    ])


def register(app) -> None:
    @app.callback(Output("circuits-body", "children"), Input(sel("bundle"), "value"), Input("circuits-top", "value"))
    @guarded("panel")
    def render(bundle, top_k):
        return circuits_view(bundle, top_k)

    app.clientside_callback(OPEN_HEAD_FROM_CIRCUIT, Output("wb-nav", "href", allow_duplicate=True),
                            Input("circuits-graph", "clickData"), State(sel("bundle"), "value"),
                            prevent_initial_call=True)


def circuits_view(bundle: str, top_k) -> html.Div:
    """The page body: what results/circuits.json holds, its basis, and the graph of its top_k strongest edges."""
    store = data()
    trace = store.trace(bundle)
    found = results_mod.find(trace.results, "circuits")
    if found is None:
        return hint_panel(results_mod.hint("circuits", store.info(bundle).path, trace))
    name = found.name
    parsed = results_mod.graph_of(found.result.graph) if found.result is not None else results_mod.Parsed()
    warnings = [note(w, warning=True) for w in found.warnings]
    warnings += [note(f"results/{name}.json: {w}", warning=True) for w in parsed.warnings]
    if parsed.value is None:
        return html.Div(warnings + [hint_panel(f"results/{name}.json holds no readable graph; rerun "
                                               f"`{results_mod.ANALYSES['circuits'].command}`")])
    top_k = top_k if top_k in TOP_K_CHOICES else DEFAULT_TOP_K
    figure = circuit_figure(parsed.value, top_k=top_k, n_layers=trace.n_layers(), n_heads=trace.n_heads())
    options = getattr(found.result, "options", {}) or {}
    return html.Div(warnings + [
        html.P(f"{len(parsed.value.nodes)} heads, {len(parsed.value.edges)} edges in results/{name}.json. "
               "A head (layer, head) reads an upstream head's output through the query or key side of its "
               "attention score; weight = that head's mean share of the score over the downstream head's "
               "firings. Drawn: the strongest edges only (control above) and the heads they join; "
               "width = weight; hover an edge for its contribution, click a head to open it, click a legend "
               "entry to hide a side.", className="wb-muted", id="circuits-summary"),
        html.P(basis_line(options), className="wb-muted", id="circuits-basis"),
        graph("circuits-graph", figure),
    ])


def basis_line(options: dict) -> str:
    """Which convention produced the numbers: Omega's basis and the firing threshold, from the result's options."""
    basis = options.get("basis")
    if basis == "reference":
        text = "Omega basis: reference (the released code's TransformerLens-folded weights on ln1.hook_normalized)"
    elif basis == "raw":
        text = "Omega basis: raw (the norm's output with the model's own W_Q, W_K)"
    else:
        text = "Omega basis: raw (this result predates named bases; rerun `workbench circuits` for the reference's)"
    threshold = options.get("firing_threshold")
    return text + (f"; firings A_ij >= {threshold}, attribution {options.get('attribution', 'score')}."
                   if threshold is not None else ".")


PAGE = Page(module="workbench.app.pages.circuits", path="/circuits", name="Circuits", order=5, layout=layout,
            register=register, params=("bundle",), description="SVD head-to-head graph", needs=("circuits",))
