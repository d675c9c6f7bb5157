"""Circuits: the SVD head-to-head communication graph (Franco & Crovella 2024), from results/circuits.json."""

from __future__ import annotations

import dash_cytoscape as cyto  # component libraries must load before the first request
from dash import Input, Output, State, html, no_update
from workbench.app.data import results as results_mod
from workbench.app.figures.graphs import STYLESHEET, circuit_elements
from workbench.app.pages.common import (
    Page,
    bundle_picker,
    data,
    first,
    guarded,
    guarded_layout,
    hint_panel,
    link,
    no_bundle,
    note,
    sel,
)


@guarded_layout
def layout(bundle=None, **_):
    store = data()
    bundle = store.resolve(first(bundle))
    if bundle is None:
        return no_bundle()
    return html.Div([
        html.H2("Circuits"),
        html.Div([bundle_picker(bundle)], className="wb-controls"),
        html.Div(id="circuits-body"),
    ])


def register(app) -> None:
    @app.callback(Output("circuits-body", "children"), Input(sel("bundle"), "value"))
    @guarded("panel")
    def render(bundle):
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
        elements = circuit_elements(parsed.value)
        options = getattr(found.result, "options", {}) or {}
        n_nodes = len(parsed.value.nodes)
        return html.Div(warnings + [
            html.P(f"{n_nodes} heads, {len(parsed.value.edges)} edges. Node = (layer, head), placed at x = head, "
                   "y = layer; edges from upstream heads, orange through the query side, green through the key side, "
                   "purple both; width = share of the contribution. Click a head to open it.", className="wb-muted"),
            html.P(basis_line(options), className="wb-muted", id="circuits-basis"),
            cyto.Cytoscape(id="circuits-graph", elements=elements, layout={"name": "preset"}, stylesheet=STYLESHEET,
                           style={"width": "100%", "height": "640px"}, minZoom=0.1, maxZoom=4),
        ])

    @app.callback(Output("wb-nav", "href", allow_duplicate=True), Input("circuits-graph", "tapNodeData"),
                  State(sel("bundle"), "value"), prevent_initial_call=True)
    @guarded("skip")
    def open_head(node, bundle):
        if not node or node.get("layer") is None or node.get("head") is None:
            return no_update
        return link("/head", bundle=bundle, stack="text", layer=node["layer"], head=node["head"])


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
