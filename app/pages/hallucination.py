"""Hallucination: the generated text coloured by a per-token score, lookback-ratio curves and heatmap.

Token probability and the lookback ratio come from every bundle's statistics; the probe score (Lookback
Lens) and T-VHD come from analysis results and show how to produce them when missing; OPERA's over-trust score
(results/opera.json) is one more curve when present.
"""

from __future__ import annotations

import math

import numpy as np
from dash import Input, Output, dcc, html
from workbench.app.data import results as results_mod
from workbench.app.data.metrics import token_lookback
from workbench.app.figures.common import message_figure
from workbench.app.figures.text import lookback_heatmap, score_colors, token_series
from workbench.app.pages.common import (
    Page,
    bundle_picker,
    data,
    first,
    graph,
    guarded,
    guarded_layout,
    hint_panel,
    link,
    no_bundle,
    note,
    sel,
)

from workbench.traces.metrics import predicting_row

COLOUR_BY = [
    {"label": "token probability", "value": "probability"},
    {"label": "lookback ratio (mean over layers and heads)", "value": "lookback"},
    {"label": "probe score (hallucination probability)", "value": "probe"},
    {"label": "T-VHD", "value": "vhd"},
]


@guarded_layout
def layout(bundle=None, colour=None, **_):
    store = data()
    bundle = store.resolve(first(bundle))
    if bundle is None:
        return no_bundle()
    values = [o["value"] for o in COLOUR_BY]
    return html.Div([
        html.H2("Hallucination view"),
        html.Div([bundle_picker(bundle),
                  dcc.Dropdown(id="hall-colour", options=COLOUR_BY, value=first(colour) if first(colour) in values
                               else "probability", clearable=False, className="wb-metric")], className="wb-controls"),
        html.Div(id="hall-notes"),
        html.Div(id="hall-text", className="wb-text"),
        graph("hall-curves", message_figure("loading…")),
        graph("hall-heatmap", message_figure("loading…")),
    ])


def series_for(trace) -> tuple[dict[str, dict[int, float]], list]:
    """Per generated token: probability, lookback mean, and the probe / T-VHD / OPERA (log10 over-trust score)
    results when present."""
    start, end = int(trace.generation.get("start", 0)), int(trace.generation.get("end", 0))
    positions = list(range(start, end))
    series: dict[str, dict[int, float]] = {}
    notes: list = []
    if trace.has("outputs.next_token_logprob"):
        logprob = trace.tensor("outputs.next_token_logprob")
        series["probability"] = {p: math.exp(float(logprob[predicting_row(p)])) for p in positions
                                 if p >= 1 and math.isfinite(float(logprob[predicting_row(p)]))}
    lookback = token_lookback(trace)
    if lookback is not None:
        means = np.nanmean(lookback, axis=(0, 1))
        series["lookback"] = {p: float(v) for p, v in zip(positions, means) if math.isfinite(float(v))}
    # analysis, its per-token values (at token positions), series name
    for key, values_name, label in (("probe", "score", "probe"), ("vhd", "t_vhd", "vhd"),
                                    ("opera", "opera_score", "opera")):
        found = results_mod.find(trace.results, key)
        if found is None:
            if key == "opera":  # an optional extra curve: no hint for every bundle without it
                continue
            if key != "vhd" or trace.meta.get("inputs", {}).get("image") is not None:  # VHD compares with/without image
                notes.append(hint_panel(results_mod.hint(key, trace.path)))
            continue
        notes += [note(w, warning=True) for w in found.warnings]
        values = found.result.token_values().get(values_name) if found.result is not None else None
        if values is None:
            continue
        parsed = results_mod.token_values(values.as_dict(), n_tokens=len(trace.tokens), gen_start=start, gen_end=end)
        notes += [note(f"results/{found.name}.json: {w}", warning=True) for w in parsed.warnings]
        series[label] = parsed.value
    return series, notes


def register(app) -> None:
    @app.callback(Output("hall-text", "children"), Output("hall-curves", "figure"), Output("hall-heatmap", "figure"),
                  Output("hall-notes", "children"), Input(sel("bundle"), "value"), Input("hall-colour", "value"))
    @guarded("children", "figure", "figure", "panel")
    def render(bundle, colour):
        trace = data().trace(bundle)
        start, end = int(trace.generation.get("start", 0)), int(trace.generation.get("end", 0))
        if end <= start:
            message = "This bundle has no generated tokens (traced with --max-new-tokens 0 or an encoder)."
            return [], message_figure(message), message_figure(message), hint_panel(message)
        texts = [t.text for t in trace.tokens]
        positions = list(range(start, end))
        series, notes = series_for(trace)
        scores = series.get(colour, {})
        if colour in ("probe", "vhd") and colour not in series:
            notes.insert(0, note(f"no {colour} scores in this bundle; the text is uncoloured", warning=True))
        bounds = {"vhd": (min(scores.values(), default=0), max(scores.values(), default=1))}.get(colour, (0.0, 1.0))
        # green = trustworthy: high probability / lookback, low probe score; T-VHD low = suspicious
        reverse = colour == "probe"
        items = score_colors([(p, texts[p]) for p in positions], scores, vmin=bounds[0], vmax=bounds[1],
                             reverse=reverse)
        spans = [html.Span(item["text"], title=item["title"], className="wb-tok",
                           style={"backgroundColor": item["color"]} if item["color"] else {}) for item in items]
        text = [html.Span(trace.meta["inputs"].get("prompt", ""), className="wb-muted"), html.Br()] + spans + [
            html.Div(dcc.Link("open the last generated token", href=link("/token", bundle=bundle, pos=end - 1)))]
        curves = token_series({k: v for k, v in series.items()}, texts=texts, positions=positions,
                              secondary=tuple(k for k in ("vhd", "opera") if k in series),
                              names={"opera": "OPERA over-trust (log10)"},
                              title="per generated token (lookback: row that predicted it)")
        lookback = token_lookback(trace)
        heat = (lookback_heatmap(lookback.mean(1), positions=positions, texts=texts,
                                 title="lookback ratio per layer (mean over heads)")
                if lookback is not None else message_figure("no statistics for the lookback ratio"))
        return text, curves, heat, notes


PAGE = Page(module="workbench.app.pages.hallucination", path="/hallucination", name="Hallucination", order=6,
            layout=layout, register=register, params=("bundle",), description="text coloured by scores; lookback",
            needs=("probe", "vhd"))
