"""Image (VLM bundles): the input image with a patch-level attention overlay, sink patches marked; blind (AVC) and
outlier (DAMRO) image tokens from results/blind_tokens.json on the patch grid."""

from __future__ import annotations

import numpy as np
from dash import Input, Output, dcc, html
from workbench.app.data import results as results_mod
from workbench.app.data.images import data_uri, model_view
from workbench.app.data.metrics import key_alpha
from workbench.app.figures.common import message_figure
from workbench.app.figures.image import flagged_patches, mark_artifacts, patch_overlay
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

from workbench.traces.tiles import image_tiles, tile_grid, whole_image_tile

HEAVY_PATCH_FACTOR = 5.0  # "alpha / n" rule of ACT with alpha ~ 5: marked when above 5x the mean


def patch_layout(trace, stack: str, tile: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(positions [rows, cols] of the patch tokens, -1 where none; those positions in row-major order) for a stack;
    in the text stack of a tiled family, of one tile (tiles share (row, col) ranges; see workbench.traces.tiles)."""
    if stack == "text":
        grid = tile_grid(trace.tokens, tile)
        return grid, np.array(sorted(int(p) for p in grid[grid >= 0]), dtype=int)
    n = trace.dims["stacks"][stack]["positions"] - 1
    side = round(n ** 0.5)
    if side * side != n:
        return np.zeros((0, 0), dtype=int), np.zeros(0, dtype=int)
    return np.arange(1, n + 1).reshape(side, side), np.arange(1, n + 1)


def tile_choice(trace, tile) -> tuple[int | None, int | None]:
    """(the tile to draw, the whole-image tile): the asked tile when the trace has it, else the whole image."""
    whole = whole_image_tile(trace.tokens, trace.model.get("architecture"))
    asked = as_int(tile)
    return (asked if asked is not None and asked in image_tiles(trace.tokens) else whole), whole


def tile_picker(trace, tile) -> list:
    """A tile menu for tiled families (nothing otherwise), the whole-image tile named and picked by default."""
    tiles = [t for t in image_tiles(trace.tokens) if t is not None]
    if len(tiles) < 2:  # still in the page (hidden): the overlay's callback takes it as an input
        return [html.Div(dcc.Dropdown(id="image-tile", options=[], value=None), style={"display": "none"})]
    picked, whole = tile_choice(trace, tile)
    options = [{"label": f"tile {t}" + (" (whole image)" if t == whole else " (crop)"), "value": t} for t in tiles]
    return [dcc.Dropdown(id="image-tile", options=options, value=picked, clearable=False, className="wb-small")]


def _select(values: np.ndarray, index, count: int) -> np.ndarray:
    """Mean over an axis-0 block (index "mean") or one entry."""
    return values.mean(0) if index in (None, "mean") else values[min(int(index), count - 1)]


@guarded_layout
def layout(bundle=None, stack=None, layer=None, head=None, pos=None, tile=None, **_):
    store = data()
    bundle = store.resolve(first(bundle))
    if bundle is None:
        return no_bundle()
    trace = store.trace(bundle)
    has_image = any(t.region == "image" for t in trace.tokens) or "vision" in trace.stacks
    header = [html.H2("Image view"), html.Div([bundle_picker(bundle)], className="wb-controls")]
    if not has_image:
        return html.Div(header + [hint_panel("This bundle has no image. The Image view needs a vision-language "
                                             "bundle: `workbench trace --model llava --image IMG --prompt '...'` "
                                             "(or tiny-llava for a quick look).")])
    stack = first(stack) if first(stack) in trace.stacks else "text"
    n_layers, n_heads, n = trace.n_layers(stack), trace.n_heads(stack), len(trace.tokens)
    layers = [{"label": "all layers (mean)", "value": "mean"}] + [{"label": f"layer {i}", "value": str(i)}
                                                                   for i in range(n_layers)]
    heads = [{"label": "mean over heads", "value": "mean"}] + [{"label": f"head {i}", "value": str(i)}
                                                               for i in range(n_heads)]
    layer, head = first(layer), first(head)
    return html.Div(header[:1] + [
        html.Div([bundle_picker(bundle, stack), stack_picker(trace, stack),
                  dcc.RadioItems(id="image-mode", inline=True, value="received", options=[
                      {"label": "attention received (statistics)", "value": "received"},
                      {"label": "from one query token", "value": "from"}]),
                  dcc.Dropdown(id="image-layer", options=layers, value=layer if layer in [o["value"] for o in layers]
                               else "mean", clearable=False, className="wb-small"),
                  dcc.Dropdown(id="image-head", options=heads, value=head if head in [o["value"] for o in heads]
                               else "mean", clearable=False, className="wb-small"),
                  *tile_picker(trace, tile),
                  html.Label(["query ", dcc.Input(id=sel("pos"), type="number", min=0, max=n - 1, step=1, debounce=True,
                                                  value=as_int(pos, n - 1, 0, n - 1), className="wb-num")])],
                 className="wb-controls"),
        html.Div(id="image-notes"),
        graph("image-overlay", message_figure("loading…"), loading=True),
        html.H3("Blind and outlier image tokens"),
        html.Div(id="image-blind-notes"),
        graph("image-blind", message_figure("loading…")),
    ])


def register(app) -> None:
    @app.callback(Output("image-overlay", "figure"), Output("image-notes", "children"),
                  Input(sel("bundle"), "value"), Input(sel("stack"), "value"), Input("image-mode", "value"),
                  Input("image-layer", "value"), Input("image-head", "value"), Input(sel("pos"), "value"),
                  Input("image-tile", "value"))
    @guarded("figure", "panel")
    def render(bundle, stack, mode, layer, head, pos, tile=None):
        store, stack = data(), stack or "text"
        trace = store.trace(bundle)
        tile, whole = tile_choice(trace, tile) if stack == "text" else (None, None)
        grid_positions, patch_positions = patch_layout(trace, stack, tile)
        if not patch_positions.size:
            return message_figure("no patch grid in this stack"), hint_panel("the image tokens carry no patch grid")
        n_layers, n_heads = trace.n_layers(stack), trace.n_heads(stack)
        notes = []
        received = np.stack([key_alpha(trace, stack, l)[:, patch_positions] for l in range(n_layers)])  # [L, H, P]
        if mode == "from":
            count = trace.dims["stacks"][stack]["positions"]
            query = as_int(pos, 0 if stack == "vision" else count - 1, 0, count - 1)
            rows, source = store.token_rows(bundle, query, stack=stack)
            values = rows.rows.numpy()[:, :, patch_positions]  # [L, H, P]
            label = f"attention from position {query}"
            notes.append(note(f"rows from {source}"))
        else:
            values, label = received, "alpha (mean attention received)"
        layer_pick = None if layer in (None, "mean") else as_int(layer, 0, 0, n_layers - 1)
        head_pick = None if head in (None, "mean") else as_int(head, 0, 0, n_heads - 1)
        chosen = _select(values, layer_pick, n_layers)  # [H, P]
        chosen = _select(chosen, head_pick, n_heads)  # [P]
        grid = np.full(grid_positions.shape, np.nan)
        lookup = {int(p): i for i, p in enumerate(patch_positions)}
        for (row, col), position in np.ndenumerate(grid_positions):
            if position >= 0:
                grid[row, col] = chosen[lookup[int(position)]]
        marked, marked_note = _marked(trace, stack, received, patch_positions, grid_positions)
        notes.append(note(marked_note))
        image = store.image(bundle) if tile == whole else None  # a crop tile: the whole picture would not fit it
        uri = None
        if tile != whole:
            notes.append(note(f"tile {tile} is a crop of the image: its patch grid is drawn without the picture "
                              f"(tile {whole} is the whole image)"))
        elif image is not None:
            uri = data_uri(model_view(image), max_side=336)
        else:
            notes.append(note("The input image was not found under the traces folder (looked for images/<sha256>.*); "
                              "showing the patch grid alone. Copy the image there or pass `workbench app --images DIR`.",
                              warning=True))
        where = "all layers" if layer_pick is None else f"layer {layer_pick}"
        who = "mean over heads" if head_pick is None else f"head {head_pick}"
        shown = "" if tile is None else f", tile {tile}" + (" (whole image)" if tile == whole else "")
        fig = patch_overlay(grid, image_uri=uri, marked=marked, label=label, positions=grid_positions,
                            title=f"{label} — {stack} stack{shown}, {where}, {who}")
        if stack == "text" and trace.model.get("kind") == "vision":
            cells, artifact_note = artifact_cells(trace, layer_pick, grid_positions)
            notes.append(note(artifact_note))
            fig = mark_artifacts(fig, cells)
        return fig, notes


    @app.callback(Output("image-blind", "figure"), Output("image-blind-notes", "children"),
                  Input(sel("bundle"), "value"))
    @guarded("figure", "panel")
    def render_blind(bundle):
        store = data()
        trace = store.trace(bundle)
        found = results_mod.find(trace.results, "blind_tokens")
        if found is None or found.result is None:
            why = found.warnings if found is not None else (results_mod.hint("blind_tokens", trace.path),)
            return message_figure("no blind / outlier token result"), [hint_panel(w) for w in why]
        result = found.result
        image = store.image(bundle)
        figure, notes = blind_figure(result, data_uri(model_view(image), max_side=336) if image is not None else None)
        return figure, [note(n) for n in notes]


def blind_figure(result, image_uri):
    """The AVC attention of the last prompt row on the patch grid, blind tokens (AVC) and outliers (DAMRO) outlined."""
    patches = [p for p in result.patches if p is not None]
    if not patches:
        return message_figure("the image tokens carry no patch grid"), []
    rows, cols = max(p[0] for p in patches) + 1, max(p[1] for p in patches) + 1
    grid, positions = np.full((rows, cols), np.nan), np.full((rows, cols), -1)
    where = {}
    for position, patch, value in zip(result.positions, result.patches, result.lm_attention):
        if patch is not None:
            grid[patch[0], patch[1]] = value
            positions[patch[0], patch[1]] = int(position)
            where[int(position)] = tuple(patch)
    groups = [("AVC blind tokens", "#ff1f1f", "solid", [where[p] for p in result.blind if p in where]),
              ("DAMRO outliers ([CLS] top-k)", "#00d5ff", "dash", [where[p] for p in result.outliers if p in where])]
    shared = len(set(result.blind) & set(result.outliers))
    notes = [(f"heat: the last prompt row's attention to each image token, mean over heads and AVC layers "
              f"{list(result.layers)}; red: {len(result.blind)} blind tokens (>= mean + {result.options.get('lamb')} "
              f"std); cyan dashed: the vision tower's top {len(result.outliers)} [CLS]-attention patches (layer "
              f"{result.options.get('feature_layer')}); {shared} in both.")]
    figure = flagged_patches(grid, groups, image_uri=image_uri, label="last-row attention", positions=positions,
                             title="blind (AVC) and outlier (DAMRO) image tokens")
    return figure, notes


def artifact_cells(trace, layer_pick, grid_positions) -> tuple[list[tuple[int, int]], str]:
    """A vision encoder's high-norm artifact patches from results/sinks.json: at the output (all layers picked) or
    in the picked layer."""
    found = results_mod.find(trace.results, "sinks")
    artifacts = found.result.artifacts if found is not None and found.result is not None else None
    if not artifacts or not artifacts.get("available"):
        why = (artifacts or {}).get("reason") or results_mod.hint("sinks", trace.path)
        return [], f"high-norm artifact tokens: none to show ({why})"
    layers = {entry["layer"]: entry for entry in artifacts["layers"]}
    entry = layers.get(layer_pick) if layer_pick is not None else artifacts["layers"][-1]
    listed = entry["artifacts"] if entry is not None else []
    cells = [tuple(int(v) for v in np.argwhere(grid_positions == a["position"])[0]) for a in listed
             if (grid_positions == a["position"]).any()]
    o = artifacts["options"]
    rule = f"norm > {o['factor']:g} x the median patch norm" if o["rule"] == "relative" else f"norm > {o['threshold']:g}"
    top = entry["top"] if entry is not None else None
    closest = f"; the highest-norm patch {tuple(top['patch'])} is {top['ratio']:.2f} x the median" if top else ""
    return cells, (f"green dotted: {len(cells)} high-norm artifact tokens ({rule}, Darcet et al.) in layer "
                   f"{entry['layer'] if entry else layer_pick}{closest}")


def _marked(trace, stack, received, patch_positions, grid_positions) -> tuple[list[tuple[int, int]], str]:
    """Visual sink patches: from results/sinks.json when present, else a statistics heuristic."""
    where = {int(p): tuple(int(v) for v in np.argwhere(grid_positions == p)[0]) for p in patch_positions}
    found = results_mod.find(trace.results, "sinks") if stack == "text" else None
    listed = found.result.token_sets().get("visual_sinks") if found is not None and found.result is not None else None
    if listed is not None:
        marked = [where[p] for p in results_mod.positions(listed, len(trace.tokens)) if p in where]
        return marked, f"outlined: {len(marked)} visual sink patches from results/{found.name}.json (VAR)"
    mean_alpha = received.mean((0, 1))
    heavy = np.nonzero(mean_alpha > HEAVY_PATCH_FACTOR * mean_alpha.mean())[0]
    marked = [where[int(patch_positions[i])] for i in heavy]
    return marked, (f"outlined: {len(marked)} patches receiving over {HEAVY_PATCH_FACTOR:g}x the mean image attention "
                    "(averaged over layers and heads; a statistics heuristic). " + (
                        _no_visual_sinks(found, trace) if stack == "text" and trace.model.get("kind") != "vision"
                        else ""))


def _no_visual_sinks(found, trace) -> str:
    """Why no VAR visual sinks are outlined: no sinks result at all, or one that could not find them."""
    if found is None or found.result is None:
        return results_mod.hint("sinks", trace.path)
    from workbench.analyses.visual_sinks import hidden_layers
    from workbench.traces.retrace import retrace

    why = "; ".join(found.result.notes) or "it lists none"
    if hidden_layers(trace):
        return f"results/{found.name}.json has attention sinks but no VAR visual sinks ({why})."
    again = retrace(trace.meta, trace.path, ["--hidden"])
    return (f"results/{found.name}.json has attention sinks but no VAR visual sinks: finding them needs the "
            f"residual stream, which this bundle was traced without. Trace its input again with it: "
            f"{again.describe()}, then run `workbench sinks {again.out}`.")


PAGE = Page(module="workbench.app.pages.image", path="/image", name="Image", order=4, layout=layout,
            register=register, params=("bundle", "stack", "pos"), description="patch-level attention on the image",
            needs=("sinks",))
