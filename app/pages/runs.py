"""Runs: the bundles under the traces directory, and a form that traces a new input in the background."""

from __future__ import annotations

from dash import ALL, Input, Output, State, dcc, html, no_update
from workbench.app.pages.common import Page, data, error_panel, guarded, guarded_layout, link, note

DEFAULT_MODEL = "smollm2"  # the form's first choice when the server offers it

# Two ticked runs open the Compare page: A = the older (lower in the table), B = the newer.
COMPARE_PICKS = """
function(values) {
    const ids = dash_clientside.callback_context.inputs_list[0].map(function(item) { return item.id.bundle; });
    const ticked = ids.filter(function(id, index) { return (values[index] || []).length > 0; });
    if (ticked.length !== 2) {
        return ["/compare", "wb-button-light",
                "tick two runs to compare them (" + ticked.length + " ticked)"];
    }
    return ["/compare?" + new URLSearchParams({a: ticked[1], b: ticked[0]}).toString(), "wb-button",
            "A = " + ticked[1] + ", B = " + ticked[0]];
}
"""


def _short(text: str, limit: int) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def bundle_table() -> html.Div:
    store = data()
    infos = store.catalog.scan(force=True)
    if not infos:
        return note(f"No bundles under {store.root} yet: trace one with the form below, or with "
                    "`workbench trace --model smollm2 --prompt '...' --out DIR/NAME.wbtrace`.")
    header = html.Tr([html.Th(h) for h in ("compare", "", "bundle", "model", "prompt", "generated", "tokens", "created",
                                             "maps", "results", "checks")])
    rows = []
    for info in sorted(infos, key=lambda i: (i.created, i.id), reverse=True):
        if not info.ok:
            rows.append(html.Tr([html.Td(""), html.Td("⚠"), html.Td(info.id), html.Td(error_panel(info.error, title="corrupt"),
                                                                      colSpan=8)], className="wb-row-error"))
            continue
        thumb = store.thumbnail(info.id) if info.image_sha256 else None
        image_cell = html.Img(src=thumb, className="wb-thumb", alt="input image") if thumb else (
            html.Span("image not found", className="wb-muted", title="put it in DIR/images/<sha256>.png or pass "
                      "--images") if info.image_sha256 else "")
        maps = ", ".join(f"{stack} {len(layers)} layers" for stack, layers in info.map_layers.items()) or "stats only"
        rows.append(html.Tr([
            html.Td(dcc.Checklist(id={"type": "runs-pick", "bundle": info.id}, value=[],
                                  options=[{"label": "", "value": info.id}])),
            html.Td(image_cell),
            html.Td([dcc.Link(info.id, href=link("/model", bundle=info.id), className="wb-open"), " ",
                     dcc.Link("compare…", href=link("/compare", a=info.id), className="wb-muted",
                              title="compare with the newest other run (pick B there)")]),
            html.Td(f"{info.model} ({info.kind})"),
            html.Td(_short(info.prompt, 70), title=info.prompt),
            html.Td(_short(info.generated, 50), title=info.generated),
            html.Td(str(info.tokens)),
            html.Td(info.created.replace("T", " ")[:16]),
            html.Td(maps),
            html.Td(", ".join(info.results) or "—"),
            html.Td("ok" if info.healthy in (True, None) else "UNHEALTHY",
                    className="" if info.healthy in (True, None) else "wb-bad"),
        ]))
    return html.Table([html.Thead(header), html.Tbody(rows)], className="wb-table", id="runs-bundles")


def trace_form() -> html.Div:
    from workbench.app.data.images import MAX_UPLOAD_BYTES
    from workbench.app.data.jobs import MAX_NEW_TOKENS, traceable_models

    options = [{"label": f"{m['name']} ({m['kind']}) — {m['description']}", "value": m["name"]}
               for m in traceable_models(data().access)]
    names = [option["value"] for option in options]
    # a real model by default: the tiny-* fixtures have random weights and generate gibberish
    default = next((name for name in (DEFAULT_MODEL, *names) if name in names and not name.startswith("tiny-")),
                   names[0] if names else None)
    return html.Div([
        html.H3("Trace a new input"),
        html.Div([
            html.Label(["model", dcc.Dropdown(id="runs-model", options=options, value=default, clearable=False)]),
            html.Label(["prompt", dcc.Textarea(id="runs-prompt", value="", placeholder="The capital of France is",
                                               style={"width": "100%", "height": "70px"})]),
            dcc.RadioItems(id="runs-raw", inline=True, value="raw", options=[
                {"label": "plain text: the model continues it (\"The capital of France is\" -> \" Paris.\")",
                 "value": "raw"},
                {"label": "chat message: wrapped in the model's chat template, the model answers it (chat models)",
                 "value": "chat"}]),
            html.Div([
                html.Label(["max new tokens", dcc.Input(id="runs-new-tokens", type="number", min=0,
                                                        max=MAX_NEW_TOKENS, step=1, value=12)]),
                html.Label(["keep maps (LAYERS:HEADS, optional)",
                            dcc.Input(id="runs-maps", type="text", placeholder="e.g. 0-3:all", debounce=True)]),
                html.Label(["bundle name (optional)", dcc.Input(id="runs-name", type="text", placeholder="auto")]),
            ], className="wb-row"),
            dcc.Upload(id="runs-upload", children=html.Div(["image for a vision-language model: drop or ",
                                                            html.A("choose a file")]),
                       max_size=MAX_UPLOAD_BYTES, accept="image/*", className="wb-upload", multiple=False),
            html.Div(id="runs-upload-status", className="wb-muted"),
            html.Button("Trace", id="runs-submit", n_clicks=0, className="wb-button"),
            html.Div(id="runs-form-message"),
            html.Div([html.Progress(id="runs-progress", value="0", max="1"),
                      html.Span(id="runs-progress-text", className="wb-muted")], id="runs-progress-box",
                     style={"display": "none"}),
        ], className="wb-form"),
        dcc.Store(id="runs-image"), dcc.Store(id="runs-job"), dcc.Store(id="runs-finished"),
        dcc.Interval(id="runs-interval", interval=500, disabled=True),
    ])


@guarded_layout
def layout(**_params):
    store = data()
    form = trace_form() if store.jobs is not None and getattr(store, "allow_trace", True) else note(
        "Tracing from the app is off (`workbench app --no-trace`).")
    return html.Div([
        html.H2("Runs"),
        html.P(f"Bundles under {store.root}. Open one to see its Model view; every page links to the others.",
               className="wb-muted"),
        html.Button("Refresh", id="runs-refresh", n_clicks=0, className="wb-button-light"),
        html.Div(bundle_table(), id="runs-table"),
        html.Div([dcc.Link("Compare the two ticked runs", href="/compare", id="runs-compare",
                           className="wb-button-light"),
                  html.Span("tick two runs to compare them", id="runs-compare-status", className="wb-muted")],
                 className="wb-controls"),
        form,
    ])


def register(app) -> None:
    app.clientside_callback(COMPARE_PICKS, Output("runs-compare", "href"), Output("runs-compare", "className"),
                            Output("runs-compare-status", "children"),
                            Input({"type": "runs-pick", "bundle": ALL}, "value"))

    @app.callback(Output("runs-table", "children"), Input("runs-refresh", "n_clicks"),
                  Input("runs-finished", "data"), prevent_initial_call=True)
    @guarded("panel")
    def refresh(_clicks, _finished):
        return bundle_table()

    @app.callback(Output("runs-image", "data"), Output("runs-upload-status", "children"),
                  Input("runs-upload", "contents"), State("runs-upload", "filename"), prevent_initial_call=True)
    @guarded("none", "panel")
    def upload(contents, filename):
        from workbench.app.data.images import decode_upload

        if contents is None:
            return None, ""
        payload, extension = decode_upload(contents, filename)
        stored = data().uploads.store(payload, extension)
        return stored.name, f"image ready: {str(filename)[:80]} ({len(payload) // 1024} kB)"

    @app.callback(Output("runs-job", "data"), Output("runs-interval", "disabled"),
                  Output("runs-form-message", "children"), Output("runs-progress-box", "style"),
                  Input("runs-submit", "n_clicks"),
                  State("runs-model", "value"), State("runs-prompt", "value"), State("runs-new-tokens", "value"),
                  State("runs-maps", "value"), State("runs-name", "value"), State("runs-image", "data"),
                  State("runs-raw", "value"), prevent_initial_call=True)
    @guarded("skip", "skip", "panel", "skip")
    def submit(_clicks, model, prompt, new_tokens, maps, name, image_name, prompt_format="raw"):
        from workbench.app.data.jobs import validate

        store = data()
        if not getattr(store, "allow_trace", True):
            return None, True, error_panel("tracing from the app is off (`workbench app --no-trace`)"), {"display": "none"}
        image = None
        if image_name:
            image = store.uploads.get(image_name)
            if image is None:
                return None, True, error_panel("the uploaded image is gone; upload it again"), {"display": "none"}
        request = validate(model, prompt, new_tokens, image=image, maps=maps, name=name, access=store.access,
                           raw=prompt_format != "chat")
        job_id = store.jobs.submit(request)
        return job_id, False, note(f"tracing {request.model}…"), {"display": "block"}

    @app.callback(Output("runs-progress", "value"), Output("runs-progress", "max"),
                  Output("runs-progress-text", "children"), Output("runs-interval", "disabled", allow_duplicate=True),
                  Output("runs-form-message", "children", allow_duplicate=True), Output("runs-finished", "data"),
                  Input("runs-interval", "n_intervals"), State("runs-job", "data"), prevent_initial_call=True)
    @guarded("skip", "skip", "skip", "skip", "panel", "skip")
    def poll(_ticks, job_id):
        status = data().jobs.status(job_id)
        if status is None:
            return no_update, no_update, "", True, no_update, no_update
        value, maximum = str(status["done"]), str(max(1, status["total"]))
        if status["state"] == "error":
            return value, maximum, "failed", True, error_panel(status["message"], title="Trace failed"), no_update
        if status["state"] == "done":
            bundle = status["bundle_id"]
            message = html.Div(["Done: ", dcc.Link(bundle, href=link("/model", bundle=bundle), id="runs-new-link"),
                                f" — {status['message']}"], className="wb-note")
            return maximum, maximum, "done", True, message, status["id"]
        return value, maximum, status["message"], False, no_update, no_update


PAGE = Page(module="workbench.app.pages.runs", path="/", name="Runs", order=0, layout=layout, register=register,
            params=(), description="bundles under the traces directory; trace a new input")
