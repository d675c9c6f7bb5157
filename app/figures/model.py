"""Model view builders: a layer x head heatmap of one metric, and per-layer curves (e.g. the entropy funnel)."""

from __future__ import annotations

import numpy as np
import plotly.graph_objects as go
from workbench.app.figures.common import FONT, layer_ticks


def head_grid(values: np.ndarray, *, label: str, zmin: float | None = None, zmax: float | None = None,
              colorscale: str = "Viridis", selected: tuple[int, int] | None = None, title: str | None = None,
              height: int | None = None) -> go.Figure:
    """Heatmap of values [layer, head]: layer 0 at the top, heads left to right; click a cell to open the head.

    NaN cells (a metric undefined for a head) stay blank. `selected` outlines one (layer, head).
    """
    values = np.asarray(values, dtype=np.float64)
    n_layers, n_heads = values.shape
    finite = values[np.isfinite(values)]
    fig = go.Figure(go.Heatmap(
        z=values, x=np.arange(n_heads), y=np.arange(n_layers), colorscale=colorscale,
        zmin=zmin if zmin is not None else (float(finite.min()) if finite.size else None),
        zmax=zmax if zmax is not None else (float(finite.max()) if finite.size else None),
        colorbar=dict(title=dict(text=label, side="right"), thickness=14),
        hovertemplate="layer %{y}, head %{x}<br>" + label + ": %{z:.4f}<extra>click to open the head</extra>",
        xgap=1, ygap=1,
    ))
    if selected is not None and 0 <= selected[0] < n_layers and 0 <= selected[1] < n_heads:
        layer, head = selected
        fig.add_shape(type="rect", x0=head - 0.5, x1=head + 0.5, y0=layer - 0.5, y1=layer + 0.5,
                      line=dict(color="#d62728", width=3))
    fig.update_layout(
        title=title, template="plotly_white", font=FONT, height=height or int(min(900, max(320, 22 * n_layers + 120))),
        margin=dict(l=60, r=20, t=50 if title else 20, b=50), clickmode="event",
        xaxis=dict(title="head", tickmode="linear" if n_heads <= 32 else "auto", dtick=1 if n_heads <= 16 else None,
                   constrain="domain"),
        yaxis=dict(title="layer", autorange="reversed", **layer_ticks(n_layers)),
    )
    return fig


CURVE_LAYER_TICKS = 16  # the curves sit in the Model view's narrow side column: 30 two-digit labels overlap there


def layer_curves(curves: dict[str, np.ndarray], *, title: str | None = None, height: int = 300,
                 secondary: tuple[str, ...] = ()) -> go.Figure:
    """Per-layer curves: for each name, values [layer, head] drawn as the mean over heads with a min-max band.
    Names in `secondary` use a right-hand axis (another unit, e.g. entropy in nats beside shares)."""
    fig = go.Figure()
    palette = ["#1f77b4", "#ff7f0e", "#2ca02c", "#9467bd", "#8c564b"]
    for index, (name, values) in enumerate(curves.items()):
        values = np.asarray(values, dtype=np.float64)
        layers = np.arange(values.shape[0])
        with np.errstate(all="ignore"):
            mean = np.nanmean(np.where(np.isfinite(values), values, np.nan), axis=1)
            low, high = np.nanmin(values, axis=1), np.nanmax(values, axis=1)
        color = palette[index % len(palette)]
        axis = "y2" if name in secondary else "y"
        fig.add_trace(go.Scatter(x=np.concatenate([layers, layers[::-1]]), y=np.concatenate([high, low[::-1]]),
                                 fill="toself", fillcolor=color, opacity=0.15, line=dict(width=0), yaxis=axis,
                                 hoverinfo="skip", showlegend=False, name=f"{name} range"))
        fig.add_trace(go.Scatter(x=layers, y=mean, mode="lines+markers", name=f"{name} (mean over heads)",
                                 line=dict(color=color), yaxis=axis,
                                 hovertemplate="layer %{x}: %{y:.4f}<extra>" + name + "</extra>"))
    used = [name for name in curves if name in secondary]
    n_layers = max((len(v) for v in curves.values()), default=1)
    fig.update_layout(title=title, template="plotly_white", font=FONT, height=height,
                      margin=dict(l=60, r=60 if used else 20, t=50 if title else 20, b=50),
                      xaxis=dict(title="layer", range=[-0.5, n_layers - 0.5],
                                 **layer_ticks(n_layers, max_ticks=CURVE_LAYER_TICKS)),
                      legend=dict(orientation="h", y=-0.25),
                      yaxis2=dict(title=", ".join(used), overlaying="y", side="right", showgrid=False,
                                  tickmode="auto") if used else None)
    return fig
