"""Attention basin builder: the attention each list item receives, by its place in the list (results/basin.json)."""

from __future__ import annotations

import html

import numpy as np
import plotly.graph_objects as go
from workbench.app.figures.common import FONT


def basin_profile(profile, layer_profile, items, *, u_score: float | None, per: str = "item") -> go.Figure:
    """Bars: attention per item averaged over layers and heads (profile [item]), items at integer positions in list
    order (names as tick labels, never a categorical axis); whiskers: the lowest and highest layer's value
    (layer_profile [layer, item]). items: [{"name", "tokens": [first, last + 1]}] in list order."""
    profile = np.asarray(profile, dtype=np.float64)
    layers = np.asarray(layer_profile, dtype=np.float64)
    positions = np.arange(len(profile))
    names = [html.escape(str(item.get("name", k)), quote=False) for k, item in enumerate(items)]
    tokens = [item.get("tokens", [0, 0]) for item in items]
    with np.errstate(all="ignore"):
        low, high = np.nanmin(layers, axis=0), np.nanmax(layers, axis=0)
    hover = [f"{name}: tokens {t[0]}-{t[1] - 1}" for name, t in zip(names, tokens)]
    fig = go.Figure(go.Bar(
        x=positions.tolist(), y=profile.tolist(), marker_color="#0072b2", customdata=hover,
        name="mean over layers and heads",
        error_y=dict(type="data", symmetric=False, array=(high - profile).tolist(), arrayminus=(profile - low).tolist(),
                     color="#888", thickness=1),
        hovertemplate="item %{x} (%{customdata})<br>attention %{y:.4f}<extra>whiskers: lowest / highest layer</extra>",
    ))
    score = "n/a" if u_score is None or not np.isfinite(u_score) else f"{u_score:+.3f}"
    fig.update_layout(
        title=f"attention per list item ({'per token' if per == 'token' else 'whole item'}) — U-score {score}",
        template="plotly_white", font=FONT, height=300, margin=dict(l=60, r=20, t=50, b=60), showlegend=False,
        xaxis=dict(title="item position in the list", tickmode="array", tickvals=positions.tolist(),
                   ticktext=names if len(names) <= 40 else None),
        yaxis=dict(title="attention received", rangemode="tozero"),
    )
    return fig
