"""Probe figures: ROC curves of detectors side by side (inputs: the dicts of `workbench.probes.roc_curve`)."""

from __future__ import annotations

import numpy as np
import plotly.graph_objects as go
from workbench.app.figures.common import FONT


def roc_curves(curves: dict[str, dict], *, title: str | None = None, height: int = 420) -> go.Figure:
    """One ROC line per named curve ({"fpr", "tpr", "auroc", ...}), AUROC in the legend, chance diagonal dashed.

    >>> fig = roc_curves({"probe": {"fpr": [0, 0.5, 1], "tpr": [0, 1, 1], "auroc": 0.75}})
    >>> fig.data[0].name
    'probe (AUROC 0.750)'
    """
    fig = go.Figure()
    for name, curve in curves.items():
        auroc = curve.get("auroc")
        label = f"{name} (AUROC {auroc:.3f})" if auroc is not None else name
        fig.add_trace(go.Scatter(x=np.asarray(curve["fpr"], float), y=np.asarray(curve["tpr"], float), mode="lines",
                                 line={"shape": "hv", "width": 2}, name=label))
    fig.add_trace(go.Scatter(x=[0, 1], y=[0, 1], mode="lines", line={"dash": "dash", "color": "#aaa"},
                             name="chance", hoverinfo="skip"))
    fig.update_layout(title=title, height=height, template="plotly_white", font=FONT,
                      xaxis={"title": "false positive rate", "range": [0, 1]},
                      yaxis={"title": "true positive rate", "range": [0, 1.02], "scaleanchor": "x"},
                      margin={"l": 60, "r": 20, "t": 50 if title else 20, "b": 50})
    return fig
