"""`create_app(traces_dir)`: the Dash app (Dash Pages) over the bundles under one directory.

The shell holds the navigation (links rebuilt from the tab's selection), a `wb-selection` store (ids and
numbers only) and the page container; each page module adds its own callbacks. `app.server` is a plain
Flask WSGI app: `workbench app` runs Flask's threaded server on 127.0.0.1; behind a WSGI server it works
the same (one process: caches and the trace queue live in it).
"""

from __future__ import annotations

from pathlib import Path

from workbench.app.data.images import MAX_UPLOAD_BYTES
from workbench.app.data.long_lived import freeze_long_lived
from workbench.app.data.service import AppData
from workbench.app.export_view import EXPORT_STYLE

STYLE = """
body { font-family: Inter, Helvetica, Arial, sans-serif; margin: 0; color: #222; background: #fafafa; }
.wb-header { display: flex; gap: 18px; align-items: center; padding: 8px 18px; background: #1f2937; color: #fff; }
.wb-brand { font-weight: 700; letter-spacing: .02em; }
.wb-header a { color: #cbd5e1; text-decoration: none; padding: 4px 8px; border-radius: 4px; }
.wb-header a:hover { background: #374151; color: #fff; }
.wb-current { margin-left: auto; font-size: 12px; color: #9ca3af; }
main { padding: 10px 18px 40px; }
h2 { margin: 8px 0 10px; } h3 { margin: 18px 0 8px; }
.wb-controls { display: flex; flex-wrap: wrap; gap: 12px; align-items: center; margin-bottom: 8px; }
.wb-bundle { min-width: 360px; } .wb-metric { min-width: 340px; } .wb-small { min-width: 150px; }
.wb-num { width: 90px; }
.wb-columns { display: flex; flex-wrap: wrap; gap: 12px; }
.wb-col-main { flex: 3 1 560px; min-width: 0; } .wb-col-side { flex: 2 1 360px; min-width: 0; }
.wb-col-half { flex: 1 1 420px; min-width: 0; }
.wb-error { background: #fdecea; border: 1px solid #f5c2c0; color: #8a1c1c; padding: 8px 12px; border-radius: 4px;
            margin: 6px 0; }
.wb-hint { background: #eef6ff; border: 1px solid #bcdcff; color: #0b4a8b; padding: 8px 12px; border-radius: 4px;
           margin: 6px 0; font-family: ui-monospace, Menlo, monospace; font-size: 13px; }
.wb-note { color: #475569; font-size: 13px; margin: 4px 0; }
.wb-warning { background: #fff7e6; border: 1px solid #ffd591; color: #874d00; padding: 6px 10px; border-radius: 4px;
              margin: 4px 0; font-size: 13px; }
.wb-muted { color: #6b7280; font-size: 13px; } .wb-bad { color: #b91c1c; font-weight: 600; }
.wb-summary { background: #fff; border: 1px solid #e5e7eb; border-radius: 4px; padding: 6px 10px; margin: 6px 0;
              font-size: 13px; }
.wb-table { border-collapse: collapse; width: 100%; background: #fff; font-size: 13px; }
.wb-table th, .wb-table td { border-bottom: 1px solid #e5e7eb; padding: 5px 8px; text-align: left; vertical-align: top; }
.wb-thumb { width: 48px; height: 48px; object-fit: cover; border-radius: 3px; }
.wb-form { background: #fff; border: 1px solid #e5e7eb; border-radius: 4px; padding: 10px 12px; display: grid; gap: 8px;
           max-width: 900px; }
.wb-form label { display: grid; gap: 3px; font-size: 13px; color: #374151; }
.wb-row { display: flex; gap: 16px; flex-wrap: wrap; }
.wb-upload { border: 1px dashed #9ca3af; border-radius: 4px; padding: 10px; text-align: center; font-size: 13px; }
.wb-button { background: #2563eb; color: #fff; border: 0; border-radius: 4px; padding: 7px 16px; cursor: pointer;
             justify-self: start; }
.wb-button-light { background: #e5e7eb; border: 0; border-radius: 4px; padding: 5px 12px; cursor: pointer;
                   margin-bottom: 6px; }
progress { width: 320px; }
.wb-strip { display: flex; flex-wrap: wrap; gap: 3px; margin: 6px 0; max-height: 180px; overflow-y: auto; }
.wb-chip { font-family: ui-monospace, Menlo, monospace; font-size: 12px; background: #fff; border: 1px solid #e5e7eb;
           border-radius: 3px; padding: 1px 4px; cursor: pointer; white-space: pre; text-decoration: none; color: #222; }
.wb-chip-on { background: #ffedd5; border-color: #fb923c; }
.wb-text { background: #fff; border: 1px solid #e5e7eb; border-radius: 4px; padding: 10px; line-height: 1.9;
           white-space: pre-wrap; }
.wb-tok { padding: 2px 1px; border-radius: 2px; }
.wb-regions { display: flex; gap: 10px; align-items: center; font-size: 12px; margin: 2px 0 6px; }
.wb-key { padding-left: 4px; }
"""

INDEX = """<!DOCTYPE html>
<html>
    <head>
        {%metas%}
        <title>{%title%}</title>
        {%favicon%}
        {%css%}
        <style>""" + STYLE + EXPORT_STYLE + """</style>
    </head>
    <body>
        {%app_entry%}
        <footer>
            {%config%}
            {%scripts%}
            {%renderer%}
        </footer>
    </body>
</html>"""


def create_app(traces_dir, *, image_dirs=(), allow_trace: bool = True, allow_recompute: bool = True,
               allow_model_dirs=(), cache_mb: int = 1536, store: AppData | None = None):
    """The Dash app over `traces_dir`. image_dirs: more folders where input images may be found;
    allow_trace: show the trace form; allow_recompute: recompute maps of statistics-only bundles;
    allow_model_dirs: model folders (or folders of them) the server may load besides registry models."""
    import dash
    from dash import ALL, Dash, Input, Output, State, dcc, html
    from workbench.app import clientside, export_view
    from workbench.app.pages import PAGES
    from workbench.app.pages.common import SELECTION_KEYS, sel

    root = Path(traces_dir).expanduser()
    store = store or AppData(root, image_dirs=[Path(d) for d in image_dirs], cache_bytes=cache_mb * 1024 * 1024,
                             allow_recompute=allow_recompute, allow_model_dirs=allow_model_dirs)
    store.allow_trace = allow_trace
    app = Dash(__name__, use_pages=True, pages_folder="", suppress_callback_exceptions=True,
               title="Attention workbench", update_title=None, index_string=INDEX)
    app.server.config["WORKBENCH_DATA"] = store
    app.server.config["MAX_CONTENT_LENGTH"] = (MAX_UPLOAD_BYTES * 4) // 3 + 1024 * 1024
    # A made-up component-suite path (e.g. `../../x`) is a client error: 404, not a 500 listing every asset.
    app.server.register_error_handler(dash.exceptions.DependencyException, lambda _error: ("not found", 404))
    for page in PAGES:
        dash.register_page(page.module, path=page.path, name=page.name, order=page.order, layout=page.layout,
                           title=f"{page.name} · Attention workbench", description=page.description)
        page.register(app)
    dash.register_page("workbench.app.not_found_404", path="/404", layout=html.Div([
        html.H2("No such page"), dcc.Link("back to the runs", href="/")]))

    app.layout = html.Div([
        dcc.Location(id="wb-nav", refresh="callback-nav"),
        dcc.Store(id="wb-selection", storage_type="memory", data={}),
        html.Header([html.Span("Attention workbench", className="wb-brand"),
                     html.Nav([dcc.Link(page.name, href=page.path, id={"type": "wb-link", "page": page.name})
                               for page in PAGES], style={"display": "flex", "gap": "4px"}),
                     html.Span(id="wb-current", className="wb-current"), export_view.export_control()],
                    className="wb-header"),
        html.Main(dash.page_container),
    ])

    # Selection bookkeeping and navigation run in the browser (no server round trip on every render).
    app.clientside_callback(clientside.merge_selection(SELECTION_KEYS), Output("wb-selection", "data"),
                            Input({"type": "wb-sel", "key": ALL}, "value"), State("wb-selection", "data"))
    app.clientside_callback(clientside.nav_links(PAGES), Output({"type": "wb-link", "page": ALL}, "href"),
                            Output("wb-current", "children"), Input("wb-selection", "data"))
    # Another bundle (or stack) changes every list of layers, heads and positions: rebuild the page. Dash
    # fires these when a page inserts its controls, so they compare with what the page was built for.
    for key in ("bundle", "stack"):
        app.clientside_callback(clientside.reopen(key, PAGES), Output("wb-nav", "href", allow_duplicate=True),
                                Input(sel(key), "value"), State("wb-page", "data"), State("wb-nav", "pathname"),
                                State("wb-selection", "data"), State(sel("bundle"), "value"),
                                prevent_initial_call=True)

    export_view.register(app)  # the Export control: this view as a self-contained HTML file or a PNG
    freeze_long_lived()  # imports and the app live as long as the server: keep full collections off them
    return app
