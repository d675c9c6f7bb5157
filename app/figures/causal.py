"""Causal-tool builders: activation patching (layer x head, layer x position), head ablation and head importance
(layer x head) and the pruning curve. Inputs are the arrays the result objects hold; signed values get a diverging
scale centred on zero, so a head that hurts the behaviour reads blue and one that carries it red."""

from __future__ import annotations

import html

import numpy as np
import plotly.graph_objects as go
from workbench.app.figures.common import FONT, layer_ticks, position_ticks
from workbench.app.figures.model import head_grid

SIGNED_SCALE = "RdBu_r"


def signed_bound(values: np.ndarray) -> float:
    """The largest |value| (a symmetric colour range around zero), 1e-9 when nothing is finite or all is zero."""
    values = np.asarray(values, dtype=np.float64)
    finite = np.abs(values[np.isfinite(values)])
    return float(max(finite.max(initial=0.0), 1e-9))


def signed_head_grid(values: np.ndarray, *, label: str, title: str | None = None,
                     selected: tuple[int, int] | None = None) -> go.Figure:
    """Layer x head heatmap of a signed quantity (patching effect, metric change, direct logit), zero white."""
    bound = signed_bound(values)
    return head_grid(values, label=label, zmin=-bound, zmax=bound, colorscale=SIGNED_SCALE, title=title,
                     selected=selected)


def patching_positions(effect: np.ndarray, *, layers: list[int], positions: list[int], texts: list[str],
                       n_layers: int, label: str = "effect", title: str | None = None) -> go.Figure:
    """Heatmap of a patching effect [layer site, position] (residual stream or attention output patched one position
    at a time); layer site n_layers is the stream after the last layer. texts: every token of the patched prompt."""
    effect = np.asarray(effect, dtype=np.float64)
    bound = signed_bound(effect)
    names = [f"after L{n_layers - 1}" if layer == n_layers else f"L{layer}" for layer in layers]
    hover_tokens = np.array([html.escape(texts[p], quote=False) if 0 <= p < len(texts) else "?" for p in positions],
                            dtype=object)
    fig = go.Figure(go.Heatmap(
        z=effect, x=np.asarray(positions), y=np.arange(len(layers)), colorscale=SIGNED_SCALE, zmin=-bound, zmax=bound,
        customdata=np.broadcast_to(hover_tokens[None, :], effect.shape),
        text=np.broadcast_to(np.array(names, dtype=object)[:, None], effect.shape),
        hovertemplate="%{text}, position %{x} <b>%{customdata}</b><br>" + label + ": %{z:.4f}<extra></extra>",
        colorbar=dict(title=dict(text=label, side="right"), thickness=14), xgap=1, ygap=1))
    step = max(1, -(-len(layers) // 32))
    fig.update_layout(
        title=title, template="plotly_white", font=FONT, height=int(min(900, max(320, 22 * len(layers) + 160))),
        margin=dict(l=80, r=20, t=50 if title else 20, b=90),
        xaxis=dict(title="patched position", showgrid=False, tickangle=-60,
                   **position_ticks(texts, min(positions), max(positions) + 1)),
        yaxis=dict(title="layer", autorange="reversed", tickmode="array", tickvals=list(range(0, len(layers), step)),
                   ticktext=names[::step]),
    )
    return fig


def pruning_curve(removed: list[int], loss: list[float], accuracy: list[float], *, n_heads: int, order: str,
                  last_heads: list[str] | None = None, title: str | None = None, height: int = 340) -> go.Figure:
    """Mean loss (left axis) and next-token accuracy (right axis) against the number of heads zero-ablated, in
    importance order (`order`: 'least' important removed first, as Michel et al. prune, or 'most')."""
    removed = list(removed)
    hover = [f"last removed {html.escape(h)}" if h else "nothing removed" for h in (last_heads or [""] * len(removed))]
    fig = go.Figure()
    fig.add_trace(go.Scatter(x=removed, y=loss, mode="lines+markers", name="loss", line=dict(color="#d62728"),
                             customdata=hover,
                             hovertemplate="%{x} heads removed<br>loss %{y:.4f}<br>%{customdata}<extra></extra>"))
    fig.add_trace(go.Scatter(x=removed, y=accuracy, mode="lines+markers", name="accuracy", yaxis="y2",
                             line=dict(color="#1f77b4"),
                             hovertemplate="%{x} heads removed<br>accuracy %{y:.3f}<extra></extra>"))
    fig.update_layout(
        title=title, template="plotly_white", font=FONT, height=height, margin=dict(l=60, r=60, t=50 if title else 20,
                                                                                  b=50),
        xaxis=dict(title=f"heads removed ({'least' if order == 'least' else 'most'} important first, of {n_heads})",
                   range=[-0.5, n_heads + 0.5]),
        yaxis=dict(title="mean loss (nats)"),
        yaxis2=dict(title="next-token accuracy", overlaying="y", side="right", range=[0, 1.02], showgrid=False,
                    tickmode="array", tickvals=[0, 0.25, 0.5, 0.75, 1]),
        legend=dict(orientation="h", y=-0.25))
    return fig


def run_bars(labels: list[str], values: list[float], *, label: str, title: str | None = None) -> go.Figure:
    """Horizontal bars of one value per ablation run (runs of several heads together, which no grid can show)."""
    values = np.asarray(values, dtype=np.float64)
    fig = go.Figure(go.Bar(x=values, y=np.arange(len(labels)), orientation="h", marker_color=np.where(
        values < 0, "#2166ac", "#b2182b"), customdata=[html.escape(t) for t in labels],
        hovertemplate="%{customdata}<br>" + label + ": %{x:.4f}<extra></extra>"))
    fig.update_layout(title=title, template="plotly_white", font=FONT, height=int(min(900, 60 + 26 * len(labels))),
                      margin=dict(l=160, r=20, t=50 if title else 20, b=50), xaxis=dict(title=label),
                      yaxis=dict(tickmode="array", tickvals=list(range(len(labels))),
                                 ticktext=[html.escape(t[:40]) for t in labels], autorange="reversed"))
    return fig


def layer_bars(values: dict[str, np.ndarray], *, label: str, title: str | None = None, height: int = 320) -> go.Figure:
    """Grouped bars per layer, one series per name (e.g. the direct logit of all heads of a layer, of its MLP)."""
    fig = go.Figure()
    palette = ["#d62728", "#2ca02c", "#7f7f7f", "#1f77b4"]
    n_layers = 0
    for index, (name, series) in enumerate(values.items()):
        series = np.asarray(series, dtype=np.float64)
        n_layers = max(n_layers, len(series))
        fig.add_trace(go.Bar(x=np.arange(len(series)), y=series, name=name, marker_color=palette[index % len(palette)],
                             hovertemplate="layer %{x}: %{y:.4f}<extra>" + html.escape(name) + "</extra>"))
    fig.update_layout(barmode="group", title=title, template="plotly_white", font=FONT, height=height,
                      margin=dict(l=60, r=20, t=50 if title else 20, b=50), yaxis=dict(title=label),
                      xaxis=dict(title="layer", **layer_ticks(n_layers)), legend=dict(orientation="h", y=-0.25))
    return fig
