"""Token: where one token looks in every layer, its region shares and entropy by depth, and its route graph."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from dash import ALL, Input, Output, State, ctx, dcc, html, no_update
from workbench.app.clientside import OPEN_HEAD_FROM_TOKEN, PICK_TOKEN
from workbench.app.data import results as results_mod
from workbench.app.data.maps import pool_columns
from workbench.app.data.metrics import token_entropy, token_region_shares
from workbench.app.figures.common import message_figure, token_text
from workbench.app.figures.model import layer_curves
from workbench.app.figures.routes import route_figure
from workbench.app.figures.token import token_layers, token_regions, token_strip_items
from workbench.app.pages import token_lens
from workbench.app.pages.common import (
    Page,
    as_int,
    bundle_picker,
    data,
    describe_error,
    first,
    graph,
    guarded,
    guarded_layout,
    hint_panel,
    link,
    no_bundle,
    note,
    region_key,
    sel,
)

from workbench.traces.metrics import predicted_position, predicting_row
from workbench.traces.tokens import REGIONS

STRIP_SPAN = 300


@guarded_layout
def layout(bundle=None, pos=None, **_):
    store = data()
    bundle = store.resolve(first(bundle))
    if bundle is None:
        return no_bundle()
    trace = store.trace(bundle)
    n = len(trace.tokens)
    head_options = [{"label": "mean over heads", "value": "mean"}, {"label": "max over heads", "value": "max"}] + [
        {"label": f"head {h}", "value": str(h)} for h in range(trace.n_heads("text"))]
    return html.Div([
        html.H2("Token view"),
        html.Div([bundle_picker(bundle),
                  html.Label(["token ", dcc.Input(id=sel("pos"), type="number", min=0, max=n - 1, step=1, debounce=True,
                                                  value=as_int(pos, n - 1, 0, n - 1), className="wb-num")]),
                  dcc.Dropdown(id="token-heads", options=head_options, value="mean", clearable=False,
                               className="wb-small")], className="wb-controls"),
        region_key(),
        html.Div(id="token-strip", className="wb-strip"),
        html.Div(id="token-info", className="wb-summary"),
        html.Div(id="token-source"),
        graph("token-layers", message_figure("loading…"), loading=True),
        html.Div([
            html.Div(graph("token-regions", message_figure("loading…")), className="wb-col-half"),
            html.Div(graph("token-entropy", message_figure("loading…")), className="wb-col-half"),
        ], className="wb-columns"),
        html.H3("Information-flow route"),
        html.Div([html.Label(["contribution threshold ",
                              dcc.Input(id="token-route-threshold", type="number", min=0, max=1, step=0.01,
                                        debounce=True, placeholder="stored", className="wb-num")]),
                  html.Span("edges below it are dropped, with whatever then no longer reaches the prediction",
                            className="wb-muted")], className="wb-controls"),
        html.Div(id="token-route"),
        html.Div([html.Div(graph("token-route-graph", message_figure("loading…"), loading=True),
                           style={"flex": "1 1 760px", "minWidth": 0}),
                  html.Div(id="token-lens", className="wb-summary",
                           style={"flex": "0 0 250px", "alignSelf": "flex-start", "marginTop": "50px"})],
                 id="token-route-row", className="wb-columns"),
        token_lens.section(),
    ])


def _strip(trace, pos: int) -> list:
    texts = [t.text for t in trace.tokens]
    regions = [t.region for t in trace.tokens]
    start = max(0, min(pos - STRIP_SPAN // 2, len(texts) - STRIP_SPAN))
    items = token_strip_items(texts, regions, pos)[start:start + STRIP_SPAN]
    chips = [html.Button(item["label"], id={"type": "token-chip", "pos": item["pos"]}, n_clicks=0,
                         className="wb-chip" + (" wb-chip-on" if item["selected"] else ""),
                         style={"borderBottom": f"3px solid {item['color']}"}, title=f"position {item['pos']}")
             for item in items]
    more = [html.Span(f"… showing positions {start}-{start + len(items) - 1} of {len(texts)}", className="wb-muted")] \
        if len(texts) > STRIP_SPAN else []
    return chips + more


def _info(trace, pos: int) -> list:
    token = trace.tokens[pos]
    parts = [html.B(token_text(token.text, 40)), f" · position {pos} · region {token.region}"]
    if token.patch:
        parts.append(f" · patch {tuple(token.patch)}")
    if trace.has("outputs.next_token_logprob") and pos >= 1:
        logprob = float(trace.tensor("outputs.next_token_logprob")[predicting_row(pos)])
        if math.isfinite(logprob):
            parts.append(f" · p(this token | before) = {math.exp(logprob):.3f}")
    if trace.has("outputs.prediction_entropy"):
        entropy = float(trace.tensor("outputs.prediction_entropy")[pos])
        if math.isfinite(entropy):
            parts.append(f" · entropy of the next-token prediction {entropy:.2f} nats")
    return parts


def _combine(rows: np.ndarray, heads: str) -> np.ndarray:
    if heads == "max":
        return rows.max(1)
    if heads not in (None, "mean") and heads.isdigit() and int(heads) < rows.shape[1]:
        return rows[:, int(heads)]
    return rows.mean(1)


@dataclass(frozen=True)
class _StoredRoutes:
    found: results_mod.Found | None
    parsed: results_mod.Parsed  # {root position: Graph}
    nbytes: int  # an estimate: sizing it the cache's way walks every node and edge dict (0.4 s at 7,000 edges)


def _stored_routes(store, bundle) -> tuple[results_mod.Found | None, results_mod.Parsed]:
    """(Found, Parsed {root position: Graph}) of the bundle's routes result, read once per bundle version (a
    route of thousands of edges takes a while to read, and every threshold change draws it again)."""
    info, trace = store.info(bundle), store.trace(bundle)

    def read():
        found = results_mod.find(trace.results, "routes")
        if found is None or found.result is None:
            return _StoredRoutes(found, results_mod.Parsed({}), 1024)
        parsed = results_mod.route_graphs(found.result, len(trace.tokens))
        items = sum(len(graph.nodes) + len(graph.edges) for graph in parsed.value.values())
        return _StoredRoutes(found, parsed, 2 * 600 * items)  # the Graph dicts and the result's networkx copy

    stored = store.cache.get_or_compute((info.key, "routes"), read)
    return stored.found, stored.parsed


LENS_NOTE = "logit lens: in the panel beside"


def route_view(bundle, pos, threshold=None):
    """The route panel's notes and figure: the route rooted at `pos` (when the bundle has one), edges of
    contribution >= threshold (None: the stored routes' tau). Node contents are not in it: the panel beside
    reads one node at a time (`lens_panel`), since the lens of every node shown took seconds."""
    store = data()
    trace = store.trace(bundle)
    found, parsed = _stored_routes(store, bundle)
    if found is None:
        return hint_panel(results_mod.hint("routes", store.info(bundle).path, trace)), message_figure("no routes")
    name = found.name
    warnings = [note(w, warning=True) for w in found.warnings]
    warnings += [note(f"results/{name}.json: {w}", warning=True) for w in parsed.warnings]
    pos = as_int(pos, len(trace.tokens) - 1)
    if pos not in parsed.value:
        available = sorted(parsed.value)
        links = [dcc.Link(str(p), href=link("/token", bundle=bundle, pos=p), className="wb-chip") for p in available]
        return html.Div(warnings + [hint_panel(f"results/{name}.json has no route rooted at position {pos} (a route "
                                               "rooted at p explains the prediction of token p + 1; `workbench "
                                               "routes` explains the last token by default). Routes exist for: "),
                                    html.Div(links)]), message_figure(f"no route rooted at position {pos}")
    stored = float(found.result.options.get("threshold", 0.0))
    threshold = stored if not isinstance(threshold, (int, float)) else min(max(float(threshold), 0.0), 1.0)
    n_layers = trace.n_layers()
    root = f"I{n_layers - 1}_{pos}"
    texts = [t.text for t in trace.tokens]
    fig = route_figure(parsed.value[pos], texts=texts, n_layers=n_layers, root=root, threshold=threshold,
                       lens_note=LENS_NOTE)
    explain = note(f"The stored routes kept contributions above tau = {stored:g}; the threshold above keeps edges "
                   f"of contribution >= {threshold:g}. Nodes: embedding (grey), after attention (blue), FFN block "
                   "(green squares), after FFN (purple); edge width and opacity = contribution. Hover a node to read "
                   "what it holds in the Logit lens panel beside (final norm, then unembedding), an edge for the "
                   "heads behind it; click either to open the head.")
    return html.Div(warnings + [explain]), fig


def _node_words(node: str, trace) -> str:
    """What a route node id names, in words: its layer, its place in the layer and its token."""
    letter, rest = node[:1], node[1:]
    layer, _, position = rest.partition("_")
    where = {"X": "embedding", "A": f"layer {layer}, after attention",
             "M": f"layer {layer}, FFN block output (the tokens it promotes)", "I": f"layer {layer}, after FFN"}
    text = trace.tokens[int(position)].text if position.isdigit() and int(position) < len(trace.tokens) else "?"
    return f"{where.get(letter, node)} · token {position} '{token_text(text, 24)}'"


def lens_panel(bundle, pos, node: str | None = None) -> list:
    """The Logit lens panel: `node` (default: the route's root, the prediction itself) through the final norm
    and the unembedding, its top tokens with probabilities and the rank of the token the prediction produced."""
    store = data()
    trace = store.trace(bundle)
    pos = as_int(pos, len(trace.tokens) - 1)
    if pos not in _stored_routes(store, bundle)[1].value:
        return [html.B("Logit lens"), html.Div("no route at this token", className="wb-muted")]
    node = node or f"I{trace.n_layers() - 1}_{pos}"
    heading = [html.B("Logit lens"), html.Div(node, id="token-lens-node", className="wb-muted"),
               html.Div(_node_words(node, trace), className="wb-note")]
    nxt = predicted_position(pos)
    watch = trace.tokens[nxt].id if nxt < len(trace.tokens) else None
    try:
        lens = store.route_node_lens(bundle, node, watch)
    except Exception as error:  # noqa: BLE001  (the graph stands without the node contents; the panel says why)
        return heading + [note(f"top tokens unavailable: {describe_error(error)}", warning=True)]
    rows = [html.Tr([html.Td(str(rank)), html.Td(token_text(text, 24), style={"whiteSpace": "pre"}),
                     html.Td(f"{probability:.3f}")]) for rank, (text, probability) in enumerate(lens.top, 1)]
    table = html.Table([html.Thead(html.Tr([html.Th("#"), html.Th("token"), html.Th("p")])), html.Tbody(rows)],
                       id="token-lens-top", className="wb-table")
    parts = heading + [table]
    if lens.watched is not None:
        text, rank, probability = lens.watched
        parts.append(html.Div(f"next token '{token_text(text, 24)}' (position {nxt}): rank {rank}, "
                              f"p = {probability:.3f}", className="wb-note"))
    parts.append(html.Div("hover another node to read it", className="wb-muted"))
    return parts


def register(app) -> None:
    @app.callback(Output("token-strip", "children"), Output("token-info", "children"),
                  Input(sel("bundle"), "value"), Input(sel("pos"), "value"))
    @guarded("children", "panel")
    def strip(bundle, pos):
        trace = data().trace(bundle)
        pos = as_int(pos, len(trace.tokens) - 1, 0, len(trace.tokens) - 1)
        return _strip(trace, pos), _info(trace, pos)

    app.clientside_callback(PICK_TOKEN, Output(sel("pos"), "value", allow_duplicate=True),
                            Input({"type": "token-chip", "pos": ALL}, "n_clicks"), prevent_initial_call=True)

    @app.callback(Output("token-layers", "figure"), Output("token-regions", "figure"), Output("token-entropy", "figure"),
                  Output("token-source", "children"),
                  Input(sel("bundle"), "value"), Input(sel("pos"), "value"), Input("token-heads", "value"))
    @guarded("figure", "figure", "figure", "panel")
    def render(bundle, pos, heads):
        store = data()
        trace = store.trace(bundle)
        texts, regions = [t.text for t in trace.tokens], [t.region for t in trace.tokens]
        pos = as_int(pos, len(texts) - 1, 0, len(texts) - 1)
        shares = token_region_shares(trace, pos).mean(1)
        regions_fig = token_regions(shares, region_names=list(REGIONS), title=f"token {pos}: attention by region")
        entropy_fig = layer_curves({"entropy": token_entropy(trace, pos)}, title=f"token {pos}: entropy by layer")
        try:
            rows, source = store.token_rows(bundle, pos)
        except Exception as error:  # statistics still answer by region; say why keys are missing
            from workbench.app.pages.common import describe_error

            message = describe_error(error)
            return (message_figure(f"key-level attention unavailable: {message}"), regions_fig, entropy_fig,
                    note(f"Key-level rows need maps: {message}", warning=True))
        combined, step = pool_columns(_combine(rows.rows.numpy(), heads), max_cells=1024)
        label = {"mean": "mean over heads", "max": "max over heads"}.get(heads, f"head {heads}")
        fig = token_layers(combined, position=pos, texts=texts, regions=regions, step=step,
                           title=f"where token {pos} '{token_text(texts[pos], 20)}' looks, per layer ({label})")
        notes = [note(f"rows from {source}")]
        if rows.mismatch > 1e-2:
            notes.append(note(f"recomputed rows differ from the stored statistics (max entropy difference "
                              f"{rows.mismatch:.2g} nats): the model or input differ from what was traced", warning=True))
        return fig, regions_fig, entropy_fig, notes

    app.clientside_callback(OPEN_HEAD_FROM_TOKEN, Output("wb-nav", "href", allow_duplicate=True),
                            Input("token-layers", "clickData"), State(sel("bundle"), "value"),
                            State(sel("pos"), "value"), State("token-heads", "value"), prevent_initial_call=True)

    @app.callback(Output("token-route", "children"), Output("token-route-graph", "figure"),
                  Input(sel("bundle"), "value"), Input(sel("pos"), "value"), Input("token-route-threshold", "value"))
    @guarded("panel", "figure")
    def route(bundle, pos, threshold):
        return route_view(bundle, pos, threshold)

    @app.callback(Output("token-lens", "children"), Input("token-route-graph", "hoverData"),
                  Input(sel("bundle"), "value"), Input(sel("pos"), "value"))
    @guarded("panel")
    def lens(hover, bundle, pos):
        """Hover fills the panel (one node's lens, on the server); a new bundle or token shows its prediction."""
        if ctx.triggered_id != "token-route-graph":
            return lens_panel(bundle, pos)
        custom = ((hover or {}).get("points") or [{}])[0].get("customdata")
        if not isinstance(custom, list) or len(custom) != 4 or not isinstance(custom[3], str):
            return no_update  # an edge's hover marker: its heads are in the hover itself
        return lens_panel(bundle, pos, custom[3])

    @app.callback(Output("wb-nav", "href", allow_duplicate=True), Input("token-route-graph", "clickData"),
                  State(sel("bundle"), "value"), prevent_initial_call=True)
    @guarded("skip")
    def open_route_head(click, bundle):
        points = (click or {}).get("points") or [{}]
        custom = points[0].get("customdata")
        if not isinstance(custom, list) or len(custom) < 3 or custom[0] is None or custom[1] is None:
            return no_update  # an embedding node, or a residual / FFN edge: no head behind it
        layer, head, pos = custom[:3]
        return link("/head", bundle=bundle, stack="text", layer=layer, head=head, pos=pos)

    token_lens.register(app)


PAGE = Page(module="workbench.app.pages.token", path="/token", name="Token", order=3, layout=layout,
            register=register, params=("bundle", "pos"), description="one token across layers; its route",
            needs=("routes", "lens"))
