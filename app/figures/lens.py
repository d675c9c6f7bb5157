"""Logit-lens builder (nostalgebraist 2020): how the target token's probability and rank develop through the
residual stream, one point per read (entering layer 0 .. entering the last layer, then after it)."""

from __future__ import annotations

import html

import numpy as np
import plotly.graph_objects as go
from workbench.app.figures.common import FONT


def lens_target_curve(probability: list[float], rank: list[int], *, target: str, title: str | None = None,
                      height: int = 320) -> go.Figure:
    """Target probability (left axis, 0-1) and rank (right axis, log, 1 = top) at each residual read; the last
    read (after the last layer) is the model's own prediction."""
    n = len(probability)
    x = np.arange(n)
    names = [f"entering L{i}" for i in range(n - 1)] + ["after the last layer"]
    shown = html.escape(target, quote=False)
    fig = go.Figure()
    fig.add_trace(go.Scatter(x=x, y=probability, mode="lines+markers", name=f"p({shown})", customdata=names,
                             line=dict(color="#d62728"),
                             hovertemplate="%{customdata}<br>p = %{y:.4f}<extra></extra>"))
    fig.add_trace(go.Scatter(x=x, y=rank, mode="lines+markers", name=f"rank of {shown}", yaxis="y2",
                             customdata=names, line=dict(color="#1f77b4", dash="dot"),
                             hovertemplate="%{customdata}<br>rank %{y}<extra></extra>"))
    step = max(1, -(-n // 32))
    decades = [10 ** k for k in range(len(str(max([int(r) for r in rank], default=1))) + 1)]  # 1, 10, ... past the max
    fig.update_layout(
        title=title, template="plotly_white", font=FONT, height=height,
        margin=dict(l=60, r=60, t=50 if title else 20, b=60), legend=dict(orientation="h", y=-0.3),
        xaxis=dict(title="residual stream read", tickmode="array", tickvals=list(x[::step]),
                   ticktext=[f"L{i}" if i < n - 1 else "out" for i in x[::step]]),
        yaxis=dict(title="probability", range=[0, 1.02]),
        yaxis2=dict(title="rank (1 = top)", type="log", overlaying="y", side="right", showgrid=False,
                    autorange="reversed", tickmode="array", tickvals=decades, ticktext=[f"{v:,}" for v in decades]))
    return fig
