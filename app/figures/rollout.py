"""Rollout / flow builders (Abnar & Zuidema 2020): the relevance of every input token for one position, as bars
coloured by region, and the per-layer rollout as a layer x key position heatmap. The VLM image heatmap is
`patch_overlay` (figures/image.py) over the result's patch grid."""

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
)


def relevance_bars(relevance: np.ndarray, *, texts: list[str], regions: list[str], position: int, label: str,
                   title: str | None = None, height: int = 340) -> go.Figure:
    """Bars of relevance [key_pos] at integer positions, coloured by the token's region; the explained position is
    marked by a dotted line (positions after it get nothing in a causal stack)."""
    relevance = np.asarray(relevance, dtype=np.float64)
    n = len(relevance)
    labels = [token_label(texts[p]) if p < len(texts) else "" for p in range(n)]
    colors = [REGION_COLORS.get(regions[p], "#999") if p < len(regions) else "#999" for p in range(n)]
    fig = go.Figure(go.Bar(x=np.arange(n), y=relevance, marker_color=colors, marker_line_width=0, customdata=labels,
                           hovertemplate="position %{x} <b>%{customdata}</b><br>" + label + ": %{y:.4f}"
                                         "<extra></extra>"))
    shapes = [dict(type="line", xref="x", yref="paper", x0=position, x1=position, y0=0, y1=1,
                   line=dict(color="#ff7f0e", width=1, dash="dot"))]
    fig.update_layout(
        title=title, template="plotly_white", font=FONT, height=height, bargap=0.1 if n < 200 else 0, shapes=shapes,
        margin=dict(l=60, r=20, t=50 if title else 20, b=90),
        xaxis=dict(title="input position", range=[-0.5, n - 0.5], showgrid=False, tickangle=-60,
                   **position_ticks(texts, 0, min(n, len(texts)))),
        yaxis=dict(title=label))
    return fig


def rollout_layers(per_layer: np.ndarray, *, texts: list[str], regions: list[str], position: int, step: int = 1,
                   title: str | None = None) -> go.Figure:
    """Heatmap layer x key position of the per-layer rollout (row l: relevance after layers 0..l; columns
    max-pooled by `step` when the sequence is longer than the axis)."""
    per_layer = np.asarray(per_layer, dtype=np.float64)
    n_layers, n_cols = per_layer.shape
    n = len(texts)
    centers = np.minimum(np.arange(n_cols) * step + (step - 1) / 2.0, n - 1)
    trace = dict(z=per_layer, x=centers, y=np.arange(n_layers), colorscale="Blues", zmin=0,
                 zmax=max(float(np.nanmax(per_layer, initial=0)), 1e-9),
                 colorbar=dict(title=dict(text="relevance", side="right"), thickness=12))
    if step == 1:
        labels = np.array([token_label(t) for t in texts], dtype=object)
        trace["customdata"] = np.broadcast_to(labels[None, :n_cols], per_layer.shape)
        trace["hovertemplate"] = "after layer %{y}, key %{x} <b>%{customdata}</b><br>relevance %{z:.4f}<extra></extra>"
    else:
        trace["hovertemplate"] = (f"after layer %{{y}}, keys ~%{{x:.0f}} (blocks of {step})<br>max relevance "
                                  "%{z:.4f}<extra></extra>")
    fig = go.Figure(go.Heatmap(**trace))
    shapes = region_band_shapes(regions, 0, n, axis="x")
    shapes.append(dict(type="line", xref="x", yref="paper", x0=position, x1=position, y0=0, y1=1,
                       line=dict(color="#ff7f0e", width=1, dash="dot")))
    fig.update_layout(
        title=title, template="plotly_white", font=FONT, shapes=shapes,
        height=int(min(900, max(300, 18 * n_layers + 150))), margin=dict(l=60, r=20, t=60 if title else 30, b=80),
        xaxis=dict(title="input position", range=[-0.5, n - 0.5], showgrid=False, tickangle=-60,
                   **position_ticks(texts, 0, n)),
        yaxis=dict(title="rolled out through layer", autorange="reversed", showgrid=False, **layer_ticks(n_layers)))
    return fig
