"""Token view builders: where one token looks across layers (key level and region level)."""

from __future__ import annotations

import numpy as np
import plotly.graph_objects as go
from workbench.app.figures.common import (
    FONT,
    REGION_COLORS,
    layer_ticks,
    position_ticks,
    region_band_shapes,
    token_label,
    token_text,
)


def token_layers(rows: np.ndarray, *, position: int, texts: list[str], regions: list[str], step: int = 1,
                 title: str | None = None, height: int | None = None) -> go.Figure:
    """Heatmap layer x key position of one query row's attention (rows [layer, cols], cols max-pooled by `step`).

    Click a cell to open that layer's head view at this query.
    """
    rows = np.asarray(rows, dtype=np.float64)
    n_layers, n_cols = rows.shape
    n = len(texts)
    centers = np.minimum(np.arange(n_cols) * step + (step - 1) / 2.0, n - 1)
    trace = dict(z=rows, x=centers, y=np.arange(n_layers), colorscale="Blues", zmin=0,
                 zmax=max(float(rows.max(initial=0)), 1e-6), colorbar=dict(title=dict(text="weight", side="right"),
                                                                           thickness=12))
    if step == 1:
        labels = np.array([token_label(t) for t in texts], dtype=object)
        trace["customdata"] = np.broadcast_to(labels[None, :n_cols], rows.shape)
        trace["hovertemplate"] = "layer %{y} → key %{x} <b>%{customdata}</b><br>p = %{z:.4f}<extra></extra>"
    else:
        trace["hovertemplate"] = f"layer %{{y}} → keys ~%{{x:.0f}} (blocks of {step})<br>max p = %{{z:.4f}}<extra></extra>"
    fig = go.Figure(go.Heatmap(**trace))
    shapes = region_band_shapes(regions, 0, n, axis="x")
    shapes.append(dict(type="line", xref="x", yref="paper", x0=position, x1=position, y0=0, y1=1,
                       line=dict(color="#ff7f0e", width=1, dash="dot")))
    fig.update_layout(
        title=title, template="plotly_white", font=FONT, clickmode="event",
        height=height or int(min(900, max(300, 18 * n_layers + 150))), shapes=shapes,
        margin=dict(l=60, r=20, t=60 if title else 30, b=80),
        xaxis=dict(title="key position", range=[-0.5, n - 0.5], showgrid=False, **position_ticks(texts, 0, n),
                   tickangle=-60),
        yaxis=dict(title="layer", autorange="reversed", showgrid=False, **layer_ticks(n_layers)),
    )
    return fig


def token_regions(shares: np.ndarray, *, region_names: list[str], title: str | None = None,
                  height: int = 300) -> go.Figure:
    """Stacked bars per layer of one query row's attention on each region (shares [layer, region], mean over heads)."""
    shares = np.asarray(shares, dtype=np.float64)
    fig = go.Figure()
    for index, region in enumerate(region_names):
        column = shares[:, index]
        if not np.any(column > 0):
            continue
        fig.add_trace(go.Bar(x=np.arange(len(column)), y=column, name=region,
                             marker_color=REGION_COLORS.get(region, "#999"),
                             hovertemplate="layer %{x}: %{y:.3f} on " + region + "<extra></extra>"))
    fig.update_layout(barmode="stack", title=title, template="plotly_white", font=FONT, height=height,
                      margin=dict(l=60, r=20, t=50 if title else 20, b=50),
                      xaxis=dict(title="layer", **layer_ticks(shares.shape[0])),
                      yaxis=dict(title="attention share", range=[0, 1.02]), legend=dict(orientation="h", y=-0.25))
    return fig


def token_strip_items(texts: list[str], regions: list[str], selected: int | None = None) -> list[dict]:
    """Plain data for a clickable token strip: [{pos, label, color, selected}] (rendered by the page)."""
    return [{"pos": position, "label": token_text(text, 24), "color": REGION_COLORS.get(region, "#999"),
             "selected": position == selected}
            for position, (text, region) in enumerate(zip(texts, regions))]
