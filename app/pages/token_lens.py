"""The Token view's logit-lens section: what `workbench lens` stored (results/lens.json) for one position, shown when
that position is selected. Per residual read (entering each layer, then after the last) the top tokens and the
target's rank and probability; per head its direct contribution to the target logit (direct logit attribution),
and per layer the heads' total beside the MLP block's."""

from __future__ import annotations

from dash import Input, Output, State, dcc, html
from workbench.app.data import results as results_mod
from workbench.app.figures.causal import layer_bars, signed_head_grid
from workbench.app.figures.common import token_text
from workbench.app.figures.lens import lens_target_curve
from workbench.app.pages.causal import OPEN_HEAD_FROM_CELL
from workbench.app.pages.common import as_int, data, graph, guarded, hint_panel, link, note, sel

TOP_SHOWN = 5


def section() -> html.Div:
    """The section's place in the Token view's layout (filled by the callback)."""
    return html.Div([html.H3("Logit lens and direct logit attribution"), html.Div(id="token-lens-view")],
                    id="token-lens-section")


def register(app) -> None:
    @app.callback(Output("token-lens-view", "children"), Input(sel("bundle"), "value"), Input(sel("pos"), "value"))
    @guarded("panel")
    def render(bundle, pos):
        return lens_view(bundle, pos)

    app.clientside_callback(OPEN_HEAD_FROM_CELL, Output("wb-nav", "href", allow_duplicate=True),
                            Input("token-lens-dla", "clickData"), State(sel("bundle"), "value"),
                            prevent_initial_call=True)


def lens_view(bundle: str, pos) -> list:
    store = data()
    trace = store.trace(bundle)
    found = results_mod.find(trace.results, "lens")
    if found is None:
        return [hint_panel(results_mod.hint("lens", store.info(bundle).path).replace("--pos POS", "--pos "
                                                                                      f"{as_int(pos, -1)}"))]
    parts = [note(w, warning=True) for w in found.warnings]
    result = found.result
    if result is None:
        return parts
    pos = as_int(pos, len(trace.tokens) - 1, 0, len(trace.tokens) - 1)
    if result.position != pos:
        return parts + [html.Div([
            f"results/{found.name}.json reads position {result.position}, not {pos}: ",
            dcc.Link(f"open position {result.position}", href=link("/token", bundle=bundle, pos=result.position)),
            f", or run `workbench lens {store.info(bundle).path} --pos {pos}` (it replaces the stored one)."],
            className="wb-hint")]
    target = str(result.target.get("text", "?"))
    shown = token_text(target, 24)
    parts.append(html.P(
        f"results/{found.name}.json: position {pos} '{token_text(result.token, 24)}', target '{shown}' "
        f"({result.target.get('chosen')}), logit {result.logit:.3f}. Each read is the residual stream through the "
        f"model's final norm and unembedding (the last row is the model's own prediction). Direct logit "
        f"attribution: each component's share of the target logit with the norm scale frozen at the final "
        f"residual ({result.options.get('scale')}); heads + MLPs + attention biases + embedding + offset = "
        f"{result.total:.3f}.", className="wb-muted", id="token-lens-summary"))
    rows = list(result.layers)
    parts.append(graph("token-lens-curve", lens_target_curve(
        [row["target_probability"] for row in rows], [row["target_rank"] for row in rows], target=shown,
        title=f"target '{shown}' through the residual stream")))
    parts.append(lens_table(rows))
    parts.append(graph("token-lens-dla", signed_head_grid(
        result.heads, label="direct logit", title=f"direct logit of '{shown}' per head — click a head to open it")))
    parts.append(graph("token-lens-layers", layer_bars(
        {"attention heads (sum)": result.heads.sum(1), "MLP": result.mlp, "attention bias": result.attn_bias},
        label="direct logit", title=f"direct logit of '{shown}' per layer")))
    return parts


def lens_table(rows: list[dict]) -> html.Table:
    """One line per residual read: the target's rank and probability and the top tokens."""
    body = []
    for row in rows:
        top = " · ".join(f"{token_text(str(text), 14)} {float(p):.2f}" for text, p in list(row["top"])[:TOP_SHOWN])
        body.append(html.Tr([html.Td(str(row.get("label", row.get("layer")))), html.Td(str(row["target_rank"])),
                             html.Td(f"{float(row['target_probability']):.3f}"),
                             html.Td(top, style={"whiteSpace": "pre"})]))
    return html.Table([html.Thead(html.Tr([html.Th("residual read"), html.Th("target rank"), html.Th("p(target)"),
                                           html.Th(f"top {TOP_SHOWN} tokens")])), html.Tbody(body)],
                      id="token-lens-table", className="wb-table")

