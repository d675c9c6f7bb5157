"""Head view builders: the query x key map of one head (any length, via a Window) and a BertViz-style line view."""

from __future__ import annotations

import numpy as np
import plotly.graph_objects as go
from workbench.app.data.maps import Window
from workbench.app.figures.common import (
    FONT,
    REGION_COLORS,
    labels_that_fit,
    position_ticks,
    region_band_shapes,
    token_label,
)

from workbench.traces.metrics import SINK_EPSILON

HOVER_TEXT_CELLS = 160 * 160  # full-resolution windows up to this many cells carry token text in every cell's hover
HOVER_TEXT_LIMIT = 60  # characters of a token shown in hover (tick labels are cut at 10)
MARGIN_TOP, MARGIN_BOTTOM = 70, 100


def attention_map(win: Window, *, texts: list[str], regions: list[str], sink_keys: list[int] = (),
                  selected_query: int | None = None, title: str | None = None, scale: str = "linear",
                  height: int = 700, uirevision=None) -> go.Figure:
    """Heatmap of a map window: x = key position, y = query position (0 at the top), both integer axes.

    Both axes carry `text position` tick labels at any length, thinned evenly to what fits the plot's height.
    Cells of a pooled window (long sequences) show the block MAXIMUM. Region strips run along the top
    (keys) and the left (queries); `sink_keys` get dashed column markers; `selected_query` a row marker.
    scale: "linear" or "log" (log10 of the weight, floored at 1e-6).
    """
    values = win.values.astype(np.float64)
    span_q, span_k = win.q1 - win.q0, win.k1 - win.k0
    square = 0.5 <= span_q / max(span_k, 1) <= 2  # square cells unless the window is a thin strip
    shown = np.log10(np.maximum(values, 1e-6)) if scale == "log" else values
    x, y = win.k_centers(), win.q_centers()
    trace = dict(z=shown, x=x, y=y, colorscale="Blues" if scale == "linear" else "Viridis",
                 zmin=-6 if scale == "log" else 0.0, zmax=0.0 if scale == "log" else max(float(values.max(initial=0)), 1e-6),
                 colorbar=dict(title=dict(text="log10 weight" if scale == "log" else "weight", side="right"),
                               thickness=12))
    value = "log10 p = %{z:.2f}" if scale == "log" else "p = %{z:.4f}"
    if win.pooled:
        trace["hovertemplate"] = (f"queries ~%{{y:.0f}} (blocks of {win.q_step}) → keys ~%{{x:.0f}} (blocks of "
                                  f"{win.k_step})<br>block max {value}<extra>zoom in for tokens</extra>")
    elif values.size <= HOVER_TEXT_CELLS:
        q_text = np.array([token_label(texts[p], HOVER_TEXT_LIMIT) for p in range(win.q0, win.q1)], dtype=object)
        k_text = np.array([token_label(texts[p], HOVER_TEXT_LIMIT) for p in range(win.k0, win.k1)], dtype=object)
        trace["customdata"] = np.stack(np.broadcast_arrays(q_text[:, None], k_text[None, :]), axis=-1)
        trace["hovertemplate"] = ("query %{y} <b>%{customdata[0]}</b> → key %{x} <b>%{customdata[1]}</b><br>"
                                  + value + "<extra></extra>")
    else:
        trace["hovertemplate"] = "query %{y} → key %{x}<br>" + value + "<extra>zoom in for tokens</extra>"
    fig = go.Figure(go.Heatmap(**trace))
    # square cells: the column's width usually limits the map to about 0.8 of the height between the margins
    # (about 420 of 530 px in a 1,400 px wide window), and both axes are about that long
    fitting = labels_that_fit(int(0.8 * (height - MARGIN_TOP - MARGIN_BOTTOM)))
    shapes = region_band_shapes(regions, win.k0, win.k1, axis="x") + region_band_shapes(regions, win.q0, win.q1,
                                                                                         axis="y")
    for key in [k for k in sink_keys if win.k0 <= k < win.k1][:24]:
        shapes.append(dict(type="line", xref="x", yref="y domain", x0=key, x1=key, y0=0, y1=1,
                           line=dict(color="#d62728", width=1, dash="dot")))
        fig.add_annotation(x=key, y=1.07, xref="x", yref="y domain", text="sink", showarrow=False,
                           font=dict(size=10, color="#d62728"))
    if selected_query is not None and win.q0 <= selected_query < win.q1:
        shapes.append(dict(type="rect", xref="x domain", yref="y", x0=0, x1=1, y0=selected_query - 0.5,
                           y1=selected_query + 0.5, line=dict(color="#ff7f0e", width=1.5)))
    fig.update_layout(
        title=title, template="plotly_white", font=FONT, height=height, shapes=shapes, uirevision=uirevision,
        margin=dict(l=110, r=20, t=MARGIN_TOP, b=MARGIN_BOTTOM), clickmode="event", dragmode="zoom",
        xaxis=dict(title="key position", range=[win.k0 - 0.5, win.k1 - 0.5], showgrid=False, zeroline=False,
                   **position_ticks(texts, win.k0, win.k1, max_labels=fitting), tickangle=-60,
                   constrain="domain"),
        yaxis=dict(title="query position", range=[win.q1 - 0.5, win.q0 - 0.5], showgrid=False, zeroline=False,
                   **position_ticks(texts, win.q0, win.q1, max_labels=fitting), ticklabelstandoff=16, constrain="domain",
                   scaleanchor="x" if square else None),
    )
    return fig


def line_view(weights: np.ndarray, *, start: int, texts: list[str], regions: list[str],
              selected_query: int | None = None, min_weight: float = 0.02, title: str | None = None) -> go.Figure:
    """BertViz-style view of positions start..start+len-1: queries on the left, keys on the right, one line
    per (query, key) with weight >= min_weight, opacity growing with the weight. With `selected_query` in
    the span, only its lines are drawn in colour (the others stay faint)."""
    weights = np.asarray(weights, dtype=np.float64)
    n = weights.shape[0]
    positions = np.arange(start, start + n)
    fig = go.Figure()
    buckets = [(0.02, 0.1, 0.15), (0.1, 0.3, 0.35), (0.3, 0.6, 0.6), (0.6, 1.01, 0.95)]
    focus = selected_query is not None and start <= selected_query < start + n
    for low, high, opacity in buckets:
        for highlighted in ((False, True) if focus else (False,)):
            xs, ys = [], []
            rows = [selected_query - start] if highlighted else range(n)
            for i in rows:
                if focus and not highlighted and i == selected_query - start:
                    continue
                for j in np.nonzero((weights[i] >= max(low, min_weight)) & (weights[i] < high))[0]:
                    xs += [0, 1, None]
                    ys += [i, int(j), None]
            if xs:
                color = "#ff7f0e" if highlighted else ("#cccccc" if focus else "#1f77b4")
                fig.add_trace(go.Scatter(x=xs, y=ys, mode="lines", hoverinfo="skip", showlegend=False,
                                         line=dict(color=color, width=1.5 + 2.5 * opacity),
                                         opacity=opacity if not focus or highlighted else 0.5 * opacity))
    labels = [token_label(texts[p], 18) for p in positions]
    colors = [REGION_COLORS.get(regions[p], "#999") for p in positions]
    for side, anchor in ((0, "middle left"), (1, "middle right")):
        fig.add_trace(go.Scatter(
            x=[side] * n, y=list(range(n)), mode="markers+text", text=labels,
            textposition="middle left" if side == 0 else "middle right", marker=dict(size=8, color=colors),
            customdata=positions, showlegend=False,
            hovertemplate=("query" if side == 0 else "key") + " %{customdata}: %{text}<extra></extra>"))
    fig.update_layout(
        title=title, template="plotly_white", font=FONT, height=max(300, 20 * n + 90), clickmode="event",
        margin=dict(l=20, r=20, t=50 if title else 20, b=20),
        xaxis=dict(visible=False, range=[-0.9, 1.9], fixedrange=True),
        yaxis=dict(visible=False, autorange="reversed", fixedrange=True),
    )
    return fig


def head_statistics(alpha: np.ndarray, entropy: np.ndarray, *, texts: list[str], regions: list[str],
                    threshold: float = SINK_EPSILON, title: str | None = None, height: int = 330) -> go.Figure:
    """What the statistics alone say about one head (no map needed): alpha of every key (bars coloured by
    region, Gu et al.'s sink threshold dashed) and the attention entropy of every query row."""
    from plotly.subplots import make_subplots

    n = len(alpha)
    positions = np.arange(n)
    labels = np.array([token_label(t) for t in texts[:n]], dtype=object)
    fig = make_subplots(rows=2, cols=1, shared_xaxes=True, vertical_spacing=0.12,
                        subplot_titles=("alpha: mean attention each key receives (all query rows)",
                                        "entropy of each query row (nats)"))
    hover = "key %{x} <b>%{customdata}</b><br>alpha %{y:.4f}<extra></extra>"
    if n <= 600:  # one bar per key, coloured by region
        fig.add_trace(go.Bar(x=positions, y=alpha, marker_color=[REGION_COLORS.get(r, "#999") for r in regions[:n]],
                             customdata=labels, showlegend=False, hovertemplate=hover), row=1, col=1)
    else:  # thousands of SVG bars are slow to draw: a step line carries the same information
        fig.add_trace(go.Scatter(x=positions, y=alpha, mode="lines", line=dict(shape="hvh", color="#1f77b4", width=1),
                                 fill="tozeroy", customdata=labels, showlegend=False, hovertemplate=hover),
                      row=1, col=1)
    fig.add_hline(y=threshold, line=dict(color="#d62728", dash="dash", width=1), row=1, col=1)
    fig.add_trace(go.Scatter(x=positions, y=entropy, mode="lines", line=dict(color="#555"), customdata=labels,
                             showlegend=False,
                             hovertemplate="query %{x} <b>%{customdata}</b><br>entropy %{y:.3f}<extra></extra>"),
                  row=2, col=1)
    fig.update_layout(title=title, template="plotly_white", font=FONT, height=height,
                      margin=dict(l=60, r=20, t=60 if title else 40, b=40), bargap=0)
    fig.update_xaxes(title_text="position", row=2, col=1)
    return fig
