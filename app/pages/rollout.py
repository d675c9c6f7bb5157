"""Rollout: attention rollout and attention flow (Abnar & Zuidema 2020) stored by `workbench rollout`
(results/rollout.json, results/flow.json): each input token's relevance for one position, the per-layer rollout,
and for VLM bundles the image tokens' relevance as a heatmap over the patch grid, drawn over the image."""

from __future__ import annotations

import numpy as np
from dash import Input, Output, dcc, html
from workbench.app.data import results as results_mod
from workbench.app.data.images import data_uri, model_view
from workbench.app.data.maps import pool_columns
from workbench.app.figures.common import token_text
from workbench.app.figures.image import patch_overlay
from workbench.app.figures.rollout import relevance_bars, rollout_layers
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

from workbench.traces.tiles import tile_grid, whole_image_tile


@guarded_layout
def layout(bundle=None, result=None, **_):
    store = data()
    bundle = store.resolve(first(bundle))
    if bundle is None:
        return no_bundle()
    trace = store.trace(bundle)
    names = [found.name for found in results_mod.find_all(trace.results, "rollout")]
    chosen = first(result) if first(result) in names else (names[0] if names else None)
    return html.Div([
        html.H2("Rollout and flow"),
        html.Div([bundle_picker(bundle),
                  html.Span("stored result:", className="wb-muted"),
                  dcc.RadioItems(id="rollout-result", options=[{"label": f"results/{n}.json", "value": n}
                                                               for n in names], value=chosen, inline=True)],
                 className="wb-controls"),
        html.Div(id="rollout-body"),
    ])


def register(app) -> None:
    @app.callback(Output("rollout-body", "children"), Input(sel("bundle"), "value"), Input("rollout-result", "value"))
    @guarded("panel")
    def render(bundle, name):
        return rollout_view(bundle, name)


def rollout_view(bundle: str, name: str | None) -> html.Div:
    """The page body for results/<name>.json (the first stored rollout result when name is not one of them)."""
    store = data()
    trace = store.trace(bundle)
    stored = results_mod.find_all(trace.results, "rollout")
    if not stored:
        return hint_panel(results_mod.hint("rollout", store.info(bundle).path)
                          + " Add `--method flow` (up to 64 positions) for attention flow (results/flow.json).")
    found = next((f for f in stored if f.name == name), stored[0])
    parts = [note(w, warning=True) for w in found.warnings]
    result = found.result
    if result is None:
        return html.Div(parts)
    texts = [t.text for t in trace.tokens] if result.stack == "text" else \
        ["[CLS]"] + [f"patch {i}" for i in range(len(result.relevance) - 1)]
    regions = [t.region for t in trace.tokens] if result.stack == "text" else \
        ["special"] + ["image"] * (len(result.relevance) - 1)
    if len(texts) != len(result.relevance):
        return html.Div(parts + [hint_panel(f"results/{found.name}.json holds {len(result.relevance)} positions, the "
                                            f"bundle's {result.stack} stack {len(texts)}: rerun `workbench rollout`")])
    position = result.position
    what = "attention flow (max-flow, normalised)" if result.method == "flow" else "attention rollout"
    top = ", ".join(f"{entry.get('position')} '{token_text(str(entry.get('text', '')), 16)}' "
                    f"{float(entry.get('relevance', 0)):.3g}" for entry in list(result.tokens)[:6])
    parts += [html.P(f"results/{found.name}.json: {what} of position {position} "
                     f"'{token_text(texts[position], 24)}' ({result.stack} stack, maps {result.maps}); each bar is "
                     "how much that input token contributes to the position's output, summing to 1. Positions after "
                     "it get nothing in a causal stack.", className="wb-muted", id="rollout-summary"),
              html.P(f"most relevant: {top}", className="wb-note")]
    parts += [note(text) for text in result.notes]
    parts.append(graph("rollout-bars", relevance_bars(result.relevance, texts=texts, regions=regions, position=position,
                                                      label="relevance", title=f"{result.method} relevance for "
                                                                                 f"position {position}")))
    if result.per_layer is not None:
        pooled, step = pool_columns(result.per_layer, max_cells=1024)
        parts.append(graph("rollout-layers", rollout_layers(pooled, texts=texts, regions=regions, position=position,
                                                            step=step, title="rollout through layers 0..l")))
    if result.patch_grid is not None:
        image = store.image(bundle)
        uri = data_uri(model_view(image), max_side=336) if image is not None else None
        if uri is None:
            parts.append(note("The input image was not found under the traces folder: the patch grid is drawn alone.",
                              warning=True))
        grid = np.asarray(result.patch_grid, dtype=np.float64)
        parts.append(graph("rollout-image", patch_overlay(grid, image_uri=uri, label="relevance",
                                                          positions=_grid_positions(trace, grid.shape),
                                                          title=f"{result.method} relevance of the image patches for "
                                                                f"position {position}")))
    return html.Div(parts)


def _grid_positions(trace, shape: tuple[int, int]) -> np.ndarray:
    """[row, col] token position of each image patch (-1 where none), for the heatmap's hover: the tile that
    rollout's patch_grid holds (the whole image of a tiled family)."""
    tile = tile_grid(trace.tokens, whole_image_tile(trace.tokens, trace.model.get("architecture")))
    positions = np.full(shape, -1, dtype=int)
    rows, cols = min(shape[0], tile.shape[0]), min(shape[1], tile.shape[1])
    positions[:rows, :cols] = tile[:rows, :cols]
    return positions


PAGE = Page(module="workbench.app.pages.rollout", path="/rollout", name="Rollout", order=10, layout=layout,
            register=register, params=("bundle",), description="attention rollout / flow per token and on the image",
            needs=("rollout",))
