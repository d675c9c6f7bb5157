"""Image view builder: the model's view of the input image with a patch-level attention overlay."""

from __future__ import annotations

import numpy as np
import plotly.graph_objects as go
from workbench.app.figures.common import FONT


def patch_overlay(grid: np.ndarray, *, image_uri: str | None = None, marked: list[tuple[int, int]] = (),
                  label: str = "attention", title: str | None = None, opacity: float = 0.55,
                  height: int = 560, positions: np.ndarray | None = None) -> go.Figure:
    """Heatmap over a rows x cols patch grid, drawn over the image (the square the processor feeds the model).

    grid: [rows, cols] values (NaN = no token for that patch); marked: (row, col) patches outlined in red
    (sink patches); positions: optional [rows, cols] token positions shown in hover.
    """
    grid = np.asarray(grid, dtype=np.float64)
    rows, cols = grid.shape
    finite = grid[np.isfinite(grid)]
    hover = "patch row %{y}, col %{x}<br>" + label + ": %{z:.4f}"
    custom = None
    if positions is not None:
        custom = np.asarray(positions)
        hover += "<br>token position %{customdata}"
    fig = go.Figure(go.Heatmap(
        z=grid, x=np.arange(cols), y=np.arange(rows), colorscale="Inferno", opacity=opacity if image_uri else 1.0,
        zmin=float(finite.min()) if finite.size else 0, zmax=float(finite.max()) if finite.size else 1,
        customdata=custom, hovertemplate=hover + "<extra></extra>",
        colorbar=dict(title=dict(text=label, side="right"), thickness=12)))
    if image_uri:
        fig.add_layout_image(dict(source=image_uri, xref="x", yref="y", x=-0.5, y=-0.5, sizex=cols, sizey=rows,
                                  sizing="stretch", layer="below", opacity=1.0))
    for row, col in marked:
        fig.add_shape(type="rect", x0=col - 0.5, x1=col + 0.5, y0=row - 0.5, y1=row + 0.5,
                      line=dict(color="#ff1f1f", width=3))
    fig.update_layout(
        title=title, template="plotly_white", font=FONT, height=height, margin=dict(l=40, r=20, t=50, b=40),
        xaxis=dict(range=[-0.5, cols - 0.5], showgrid=False, zeroline=False, title="patch column", constrain="domain",
                   dtick=1 if cols <= 32 else None),
        yaxis=dict(range=[rows - 0.5, -0.5], showgrid=False, zeroline=False, title="patch row", scaleanchor="x",
                   dtick=1 if rows <= 32 else None),
    )
    return fig


def flagged_patches(grid: np.ndarray, groups: list[tuple[str, str, str, list[tuple[int, int]]]], *,
                    image_uri: str | None = None, label: str = "attention", title: str | None = None,
                    positions: np.ndarray | None = None, height: int = 520) -> go.Figure:
    """The patch overlay with several named sets of patches outlined, one colour and dash each, named in a legend.

    groups: (name, colour, dash, [(row, col), ...]) per set (e.g. AVC blind tokens, DAMRO outlier tokens); a patch
    in two sets gets both outlines, the second drawn slightly inside the first.
    """
    fig = patch_overlay(grid, image_uri=image_uri, label=label, title=title, positions=positions, height=height)
    for index, (name, colour, dash, patches) in enumerate(groups):
        inset = 0.06 + 0.1 * index
        for row, col in patches:
            fig.add_shape(type="rect", x0=col - 0.5 + inset, x1=col + 0.5 - inset, y0=row - 0.5 + inset,
                          y1=row + 0.5 - inset, line=dict(color=colour, width=3, dash=dash))
        # an empty trace carries the legend entry of the outlines
        fig.add_trace(go.Scatter(x=[None], y=[None], mode="lines", line=dict(color=colour, width=3, dash=dash),
                                 name=f"{name} ({len(patches)})", showlegend=True))
    fig.update_layout(legend=dict(orientation="h", yanchor="top", y=-0.12, x=0))
    return fig


ARTIFACT_COLOUR = "#39ff14"


def mark_artifacts(fig: go.Figure, patches: list[tuple[int, int]], *, name: str = "high-norm artifact tokens") -> go.Figure:
    """Outline a vision encoder's high-norm artifact patches (Darcet et al. 2024) on a patch overlay: green dotted
    squares just inside the cell, so a patch also outlined as a sink keeps both marks, plus a legend entry."""
    for row, col in patches:
        fig.add_shape(type="rect", x0=col - 0.38, x1=col + 0.38, y0=row - 0.38, y1=row + 0.38,
                      line=dict(color=ARTIFACT_COLOUR, width=3, dash="dot"))
    fig.add_trace(go.Scatter(x=[None], y=[None], mode="lines", line=dict(color=ARTIFACT_COLOUR, width=3, dash="dot"),
                             name=f"{name} ({len(patches)})", showlegend=True))
    fig.update_layout(legend=dict(orientation="h", yanchor="top", y=-0.12, x=0))
    return fig
