"""Attention basin builder: the attention each list item receives, by its place in the list (results/basin.json)."""

from __future__ import annotations

import html

import numpy as np
import plotly.graph_objects as go
from workbench.app.figures.common import FONT, token_label

LABEL_CHARS = 18  # an item's text is cut to this on its tick (whole in hover): 20 slanted labels fit side by side


def basin_profile(profile, layer_profile, items, *, u_score: float | None, per: str = "item",
                  texts: list[str] | None = None) -> go.Figure:
    """Bars: attention per item averaged over layers and heads (profile [item]), items at integer positions in list
    order (never a categorical axis); whiskers: the lowest and highest layer's value (layer_profile [layer, item]).
    items: [{"name", "tokens": [first, last + 1]}] in list order; texts: each item's text, its tick label (cut
    short) and hover, since span names like `item_3` say nothing about the item; without it the names label."""
    profile = np.asarray(profile, dtype=np.float64)
    layers = np.asarray(layer_profile, dtype=np.float64)
    positions = np.arange(len(profile))
    names = [html.escape(str(item.get("name", k)), quote=False) for k, item in enumerate(items)]
    shown = [str(text).strip() for text in texts] if texts is not None else [str(item.get("name", k))
                                                                            for k, item in enumerate(items)]
    ticks = [token_label(text, LABEL_CHARS) for text in shown]
    tokens = [item.get("tokens", [0, 0]) for item in items]
    with np.errstate(all="ignore"):
        low, high = np.nanmin(layers, axis=0), np.nanmax(layers, axis=0)
    hover = [f"{name}: tokens {t[0]}-{t[1] - 1}<br>{html.escape(text, quote=False)}"
             for name, t, text in zip(names, tokens, shown)]
    fig = go.Figure(go.Bar(
        x=positions.tolist(), y=profile.tolist(), marker_color="#0072b2", customdata=hover,
        name="mean over layers and heads",
        error_y=dict(type="data", symmetric=False, array=(high - profile).tolist(), arrayminus=(profile - low).tolist(),
                     color="#888", thickness=1),
        hovertemplate="item %{x}: %{customdata}<br>attention %{y:.4f}<extra>whiskers: lowest / highest layer</extra>",
    ))
    slanted = len(ticks) > 6 or max(map(len, shown), default=0) > 8  # long or many labels slant, never overlap
    score = "n/a" if u_score is None or not np.isfinite(u_score) else f"{u_score:+.3f}"
    fig.update_layout(
        title=f"attention per list item ({'per token' if per == 'token' else 'whole item'}) — U-score {score}",
        template="plotly_white", font=FONT, height=300 + (110 if slanted else 0), showlegend=False,
        margin=dict(l=70, r=20, t=50, b=60 + (110 if slanted else 0)),
        xaxis=dict(title="item (in list order)", tickmode="array", tickvals=positions.tolist(),
                   ticktext=ticks if len(ticks) <= 40 else None, tickangle=-40 if slanted else 0),
        yaxis=dict(title="attention received", rangemode="tozero"),
    )
    return fig
