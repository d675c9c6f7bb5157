"""Shared pieces of the figure builders: region colours, safe token labels, message figures, region bands.

Token text never becomes a categorical axis (duplicates would collapse): axes are integer positions and
text appears as tick labels (thinned to what fits the axis) and in hover text, escaped (plotly renders a
subset of HTML in labels, and token text is untrusted input).
"""

from __future__ import annotations

import html
import math

import plotly.graph_objects as go

REGION_COLORS = {
    "special": "#9e9e9e",
    "system": "#8e6bbf",
    "image": "#e69f00",
    "prompt": "#0072b2",
    "generated": "#009e73",
}
FONT = dict(family="Inter, Helvetica, Arial, sans-serif", size=12)


def token_text(text: str, limit: int = 14) -> str:
    """A short, whitespace-visible label for a token, NOT escaped (for Dash components, which escape it themselves)."""
    shown = text.replace("\n", "⏎").replace("\t", "⇥").replace("\r", "␍")
    if shown.startswith(" "):
        shown = "␣" + shown[1:]
    if not shown.strip():
        shown = shown.replace(" ", "␣") or "∅"
    if len(shown) > limit:
        shown = shown[: limit - 1] + "…"
    return shown


def token_label(text: str, limit: int = 14) -> str:
    """token_text, HTML-escaped: for plotly ticks and hover (plotly renders a subset of HTML there)."""
    return html.escape(token_text(text, limit), quote=False)


def layer_ticks(n_layers: int, *, max_ticks: int = 32) -> dict:
    """Axis settings that label whole layers only (plotly's automatic ticks put 0.5, 1.5 on a 3-layer axis):
    every layer up to `max_ticks` layers, else every k-th from 0."""
    step = max(1, math.ceil(n_layers / max_ticks))
    return dict(tickmode="linear", tick0=0, dtick=step)


def message_figure(text: str, *, height: int = 320, title: str | None = None) -> go.Figure:
    """An empty figure carrying a message (missing data, nothing selected)."""
    fig = go.Figure()
    fig.add_annotation(text=html.escape(text).replace("\n", "<br>"), x=0.5, y=0.5, xref="paper", yref="paper",
                       showarrow=False, font=dict(size=14, color="#555"))
    fig.update_layout(height=height, xaxis=dict(visible=False), yaxis=dict(visible=False), template="plotly_white",
                      margin=dict(l=20, r=20, t=40 if title else 20, b=20), title=title, font=FONT)
    return fig


def region_runs(regions: list[str], start: int, end: int) -> list[tuple[str, int, int]]:
    """Contiguous runs [(region, first, last)] of positions start..end-1."""
    runs: list[tuple[str, int, int]] = []
    for position in range(start, end):
        region = regions[position]
        if runs and runs[-1][0] == region and runs[-1][2] == position - 1:
            runs[-1] = (region, runs[-1][1], position)
        else:
            runs.append((region, position, position))
    return runs


def region_band_shapes(regions: list[str], start: int, end: int, *, axis: str, max_runs: int = 400) -> list[dict]:
    """Coloured strips outside the plot area marking each token's region along the x (keys) or y (queries) axis."""
    shapes = []
    for region, first, last in region_runs(regions, start, end)[:max_runs]:
        color = REGION_COLORS.get(region, "#ccc")
        if axis == "x":
            shapes.append(dict(type="rect", xref="x", yref="y domain", x0=first - 0.5, x1=last + 0.5, y0=1.005,
                               y1=1.035, fillcolor=color, line=dict(width=0), layer="above"))
        else:
            shapes.append(dict(type="rect", xref="x domain", yref="y", x0=-0.03, x1=-0.005, y0=first - 0.5,
                               y1=last + 0.5, fillcolor=color, line=dict(width=0), layer="above"))
    return shapes


LABEL_PIXELS = 14  # one tick label per this many pixels of axis: 12 px text plus a little air


def labels_that_fit(axis_pixels: int) -> int:
    """How many token labels an axis of `axis_pixels` pixels can carry without overlapping."""
    return max(2, int(axis_pixels) // LABEL_PIXELS)


def thinned_positions(start: int, end: int, max_labels: int) -> list[int]:
    """Evenly spaced positions of start..end-1, at most `max_labels`: every position when they fit, else the
    multiples of the smallest step that fits (multiples, so a zoomed window keeps the labels it had)."""
    span = end - start
    if span <= 0:
        return []
    step = max(1, math.ceil(span / max(1, max_labels)))
    first = -(-start // step) * step
    return list(range(first, end, step))


def position_ticks(texts: list[str], start: int, end: int, *, max_labels: int = 32) -> dict:
    """Axis ticks for positions start..end-1 labelled `text position`, thinned evenly to at most `max_labels`.

    The axis values stay integer positions, so two tokens with the same text keep two ticks (a categorical
    axis would merge them)."""
    shown = thinned_positions(start, end, max_labels)
    return dict(tickmode="array", tickvals=shown, ticktext=[f"{token_label(texts[p], 10)} {p}" for p in shown])
