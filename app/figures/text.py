"""Hallucination view builders: generated text coloured by a per-token score, and per-token curves."""

from __future__ import annotations

import math

import numpy as np
import plotly.colors
import plotly.graph_objects as go
from workbench.app.figures.common import FONT, layer_ticks, token_label


def score_colors(tokens: list[tuple[int, str]], scores: dict[int, float], *, vmin: float, vmax: float,
                 colorscale: str = "RdYlGn", reverse: bool = False) -> list[dict]:
    """[{pos, text, color, title}] for a coloured-text rendering (color None where a token has no score)."""
    scale = plotly.colors.get_colorscale(colorscale)
    span = (vmax - vmin) or 1.0
    out = []
    for position, text in tokens:
        value = scores.get(position)
        if value is None or not math.isfinite(value):
            out.append({"pos": position, "text": text, "color": None, "title": f"position {position}: no score"})
            continue
        fraction = min(1.0, max(0.0, (value - vmin) / span))
        color = plotly.colors.sample_colorscale(scale, 1.0 - fraction if reverse else fraction)[0]
        out.append({"pos": position, "text": text, "color": color, "title": f"position {position}: {value:.3f}"})
    return out


MAX_TOKEN_TICKS = 40  # token-text ticks on a generated-token axis: every token up to this, else an even subset


def token_ticks(positions: list[int], labels: list[str]) -> dict:
    """Tick settings naming tokens by their text: every position up to MAX_TOKEN_TICKS, else every k-th (the values
    stay positions, so a long generation keeps readable token names instead of bare numbers)."""
    step = max(1, math.ceil(len(positions) / MAX_TOKEN_TICKS))
    return dict(tickmode="array", tickvals=list(positions[::step]), ticktext=list(labels[::step]), tickangle=-60)


def token_series(series: dict[str, dict[int, float]], *, texts: list[str], positions: list[int],
                 title: str | None = None, height: int = 320, secondary: tuple[str, ...] = (),
                 names: dict[str, str] | None = None) -> go.Figure:
    """Lines over generated token positions, one per named series {position: value}; names in `secondary`
    use a right-hand axis (e.g. log-probabilities beside ratios in [0, 1]); `names` gives a series a longer
    display name (legend, hover, axis title) than its key."""
    fig = go.Figure()
    names = names or {}
    labels = [token_label(texts[p], 12) for p in positions]
    # [position, label] per point: on an axis with tick text, plotly's %{x} shows the tick text, not the number
    custom = [[p, label] for p, label in zip(positions, labels)]
    for key, values in series.items():
        name = names.get(key, key)
        ys = [values.get(p, float("nan")) for p in positions]
        fig.add_trace(go.Scatter(
            x=positions, y=ys, mode="lines+markers", name=name, customdata=custom,
            yaxis="y2" if key in secondary else "y",
            hovertemplate="position %{customdata[0]} <b>%{customdata[1]}</b><br>" + name + ": %{y:.3f}<extra></extra>"))
    fig.update_layout(
        title=title, template="plotly_white", font=FONT, height=height, margin=dict(l=60, r=60, t=50, b=80),
        xaxis=dict(title="generated token (position)", **token_ticks(positions, labels)),
        yaxis=dict(title="ratio / score"), legend=dict(orientation="h", y=-0.45),
        yaxis2=dict(title=", ".join(names.get(k, k) for k in secondary if k in series), overlaying="y", side="right",
                    showgrid=False, tickmode="auto") if secondary else None,
    )
    return fig


def lookback_heatmap(values: np.ndarray, *, positions: list[int], texts: list[str], title: str | None = None,
                     height: int | None = None) -> go.Figure:
    """Heatmap layer x generated token of the lookback ratio (mean over heads); values [layer, token]."""
    values = np.asarray(values, dtype=np.float64)
    labels = np.array([token_label(texts[p], 12) for p in positions], dtype=object)
    fig = go.Figure(go.Heatmap(
        z=values, x=positions, y=np.arange(values.shape[0]), colorscale="RdBu", zmin=0, zmax=1,
        customdata=np.broadcast_to(labels[None, :], values.shape),
        hovertemplate="layer %{y}, token %{x} <b>%{customdata}</b><br>lookback ratio %{z:.3f}<extra></extra>",
        colorbar=dict(title=dict(text="lookback", side="right"), thickness=12)))
    fig.update_layout(title=title, template="plotly_white", font=FONT,
                      height=height or int(min(800, max(300, 16 * values.shape[0] + 150))),
                      margin=dict(l=60, r=20, t=50, b=80),
                      xaxis=dict(title="generated token (position)", **token_ticks(positions, list(labels))),
                      yaxis=dict(title="layer", autorange="reversed", **layer_ticks(values.shape[0])))
    return fig
