"""Causal: what the causal tools stored in a bundle. Activation patching (results/patching.json) as a layer x head
heatmap of the effect (layer x position for residual-stream or attention-output patching one position at a time),
head ablation (results/ablation.json) as the metric change per head, and head importance (Michel et al. 2019,
results/importance.json) as a layer x head heatmap with its pruning curve."""

from __future__ import annotations

import warnings

import numpy as np
from dash import Input, Output, State, html
from workbench.app.data import results as results_mod
from workbench.app.figures.causal import (
    layer_bars,
    patching_positions,
    pruning_curve,
    run_bars,
    signed_head_grid,
)
from workbench.app.figures.model import head_grid
from workbench.app.pages.common import (
    Page,
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

GRAPHS = ("causal-patching", "causal-ablation", "causal-importance")

# A click on a layer x head cell (x = head, y = layer) opens that head; other graphs carry no such cell.
OPEN_HEAD_FROM_CELL = """
function(click, bundle) {
    if (!click || !click.points || !click.points.length) { return dash_clientside.no_update; }
    const point = click.points[0];
    if (typeof point.x !== "number" || typeof point.y !== "number" || point.z === undefined) {
        return dash_clientside.no_update;
    }
    const query = new URLSearchParams({bundle: bundle, stack: "text", layer: point.y, head: point.x});
    return "/head?" + query.toString();
}
"""


@guarded_layout
def layout(bundle=None, **_):
    store = data()
    bundle = store.resolve(first(bundle))
    if bundle is None:
        return no_bundle()
    return html.Div([
        html.H2("Causal tools"),
        html.Div([bundle_picker(bundle)], className="wb-controls"),
        html.Div(id="causal-body"),
    ])


def register(app) -> None:
    @app.callback(Output("causal-body", "children"), Input(sel("bundle"), "value"))
    @guarded("panel")
    def render(bundle):
        return causal_view(bundle)

    for graph_id in GRAPHS:
        app.clientside_callback(OPEN_HEAD_FROM_CELL, Output("wb-nav", "href", allow_duplicate=True),
                                Input(graph_id, "clickData"), State(sel("bundle"), "value"), prevent_initial_call=True)


def causal_view(bundle: str) -> html.Div:
    """The page body: one section per causal analysis, a hint naming the command where the bundle has none."""
    store = data()
    trace = store.trace(bundle)
    path = store.info(bundle).path
    parts = []
    for key, title, section in (("patching", "Activation patching", patching_section),
                                ("ablation", "Head ablation", ablation_section),
                                ("importance", "Head importance", importance_section)):
        parts.append(html.H3(title))
        found = results_mod.find(trace.results, key)
        if found is None:
            parts.append(hint_panel(results_mod.hint(key, path)))
            continue
        parts += [note(w, warning=True) for w in found.warnings]
        if found.result is not None:
            parts += section(trace, found)
    return html.Div(parts)


def _head_label(layer: int, head: int) -> str:
    return f"L{layer}H{head}" if head >= 0 else f"L{layer}"


def patching_grid(result, n_layers: int, n_heads: int) -> tuple[np.ndarray, str]:
    """[layer, head] effect of a heads patching result on the model's grid (NaN where not patched); with several
    position slots, each head's largest effect over them."""
    effect = np.where(np.isfinite(result.effect), result.effect, np.nan)
    if effect.shape[2] == 1:
        effect = effect[:, :, 0]
    else:
        with warnings.catch_warnings():  # a head with no finite slot stays NaN (blank)
            warnings.simplefilter("ignore", RuntimeWarning)
            effect = np.nanmax(effect, axis=2)
    grid = np.full((n_layers, n_heads), np.nan)
    grid[np.ix_(list(result.layers), list(result.heads))] = effect
    how = "" if result.effect.shape[2] == 1 else f" (largest over {result.effect.shape[2]} position slots)"
    return grid, how


def patching_section(trace, found) -> list:
    result, name = found.result, found.name
    options = result.options
    what, direction = options.get("what"), options.get("direction")
    n_layers, n_heads = trace.n_layers(), trace.n_heads()
    pairs = len(result.pairs)
    moved = ("clean activations into the corrupted run" if direction == "denoise"
             else "corrupted activations into the clean run")
    summary = (f"results/{name}.json: {result.model}, {what} patched ({direction}: {moved}), "
               f"metric {options.get('metric')} averaged over {pairs} pair(s): clean {result.clean:.3f}, corrupted "
               f"{result.corrupted:.3f}. Effect = (patched - corrupted) / (clean - corrupted): 1 restores the clean "
               "run's metric, 0 leaves the corrupted one's.")
    top = ", ".join(f"{_head_label(r['layer'], r['head'])}"
                    + ("" if r["positions"] is None else f"@{','.join(map(str, r['positions']))}")
                    + f" {r['effect']:.2f}" for r in result.ranking(8))
    parts = [html.P(summary, className="wb-muted", id="causal-patching-summary"),
             html.P(f"largest effects: {top}", className="wb-note")]
    sites = n_layers + (1 if what == "resid" else 0)
    if max(result.layers, default=0) >= sites or max(result.heads, default=0) >= n_heads:
        return parts + [note(f"results/{name}.json patched layers up to {max(result.layers)} and heads up to "
                             f"{max(result.heads)}: not this bundle's {n_layers} x {n_heads} model", warning=True)]
    if what == "heads":
        grid, how = patching_grid(result, n_layers, n_heads)
        parts.append(graph("causal-patching", signed_head_grid(
            grid, label="effect", title=f"patching effect per head{how} — click a head to open it")))
        return parts
    slots = result.slot_positions
    effect = np.where(np.isfinite(result.effect[:, 0, :]), result.effect[:, 0, :], np.nan)  # [layer site, slot]
    if len(slots) > 1 and all(s is not None and len(s) == 1 for s in slots):
        lengths = {p.get("n_tokens") for p in result.pairs}
        texts = [t.text for t in trace.tokens] if lengths == {len(trace.tokens)} else \
            [f"p{i}" for i in range(max(lengths, default=0) or 1 + max(s[0] for s in slots))]
        if lengths != {len(trace.tokens)}:
            parts.append(note("The patched prompts are not this bundle's tokens: positions are shown without text.",
                              warning=True))
        parts.append(graph("causal-patching-positions", patching_positions(
            effect, layers=list(result.layers), positions=[s[0] for s in slots], texts=texts, n_layers=n_layers,
            title=f"patching effect of the {'residual stream' if what == 'resid' else 'attention output'} per layer "
                  "and position")))
        return parts
    series = np.full(sites, np.nan)
    series[list(result.layers)] = effect[:, 0]
    where = "all positions" if slots[0] is None else f"positions {', '.join(map(str, slots[0]))}"
    parts.append(graph("causal-patching-layers", layer_bars({"effect": series}, label="effect",
                                                            title=f"patching effect per layer ({what}, {where})")))
    return parts


def ablation_section(trace, found) -> list:
    result, name = found.result, found.name
    options = result.options
    baseline = "" if result.corrupted is None else f", corrupted {result.corrupted:.3f}"
    parts = [html.P(f"results/{name}.json: {result.model}, {options.get('method')}-ablation, metric "
                    f"{options.get('metric')} over {len(result.prompts)} prompt(s): clean {result.clean:.3f}"
                    f"{baseline}. Change = ablated - clean (negative: the head carried the behaviour).",
                    className="wb-muted", id="causal-ablation-summary")]
    metrics = result.head_metrics()
    if "ablation_change" in metrics:
        grid = np.full((trace.n_layers(), trace.n_heads()), np.nan)
        values = metrics["ablation_change"].values
        grid[:values.shape[0], :values.shape[1]] = values
        parts.append(graph("causal-ablation", signed_head_grid(
            grid, label="change", title="metric change with each head ablated alone — click a head to open it")))
    else:
        labels = ["+".join(_head_label(l, h) for l, h in run) if len(run) <= 6 else f"{len(run)} heads"
                  for run in result.runs]
        parts.append(graph("causal-ablation-runs", run_bars(labels, list(result.change), label="change",
                                                            title="metric change per ablation run")))
    return parts


def importance_section(trace, found) -> list:
    result, name = found.result, found.name
    options = result.options
    n_layers, n_heads = result.scores.shape
    top = ", ".join(_head_label(l, h) for l, h in result.ranking[:10])
    parts = [html.P(f"results/{name}.json: {result.model}, mean |dL/dm_h| over {result.n_prompts} prompt(s) "
                    f"(loss {result.loss:.3f}), normalised {options.get('normalise')}. Most important: {top}.",
                    className="wb-muted", id="causal-importance-summary"),
             graph("causal-importance", head_grid(result.scores, label="importance", zmin=0.0, colorscale="Viridis",
                                                  title="head importance (Michel et al. 2019) — click a head to "
                                                        "open it"))]
    if (n_layers, n_heads) != (trace.n_layers(), trace.n_heads()):
        parts.insert(1, note(f"results/{name}.json scores a {n_layers} x {n_heads} model; this bundle's model is "
                             f"{trace.n_layers()} x {trace.n_heads()}", warning=True))
    if result.curve:
        curve = list(result.curve)
        parts.append(graph("causal-pruning", pruning_curve(
            [c["removed"] for c in curve], [c["loss"] for c in curve], [c["accuracy"] for c in curve],
            n_heads=n_layers * n_heads, order=options.get("order", "least"),
            last_heads=[", ".join(_head_label(*h) for h in c.get("heads") or []) for c in curve],
            title="pruning curve: heads zero-ablated in importance order")))
    else:
        parts.append(note("No pruning curve stored (run `workbench importance ... --curve`)."))
    return parts


PAGE = Page(module="workbench.app.pages.causal", path="/causal", name="Causal", order=9, layout=layout,
            register=register, params=("bundle",), description="patching, ablation, head importance",
            needs=("patching", "ablation", "importance"))
