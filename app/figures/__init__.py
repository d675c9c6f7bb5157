"""Pure figure builders shared by the app and the notebooks: inputs are arrays and lists, outputs `go.Figure`
(or coloured text, PNG data URIs for thumbnails). No Dash, no bundle access here."""

from workbench.app.figures.circuits import circuit_figure
from workbench.app.figures.head import attention_map, line_view
from workbench.app.figures.image import patch_overlay
from workbench.app.figures.model import head_grid, layer_curves
from workbench.app.figures.routes import route_figure
from workbench.app.figures.text import lookback_heatmap, score_colors, token_series
from workbench.app.figures.thumbnails import thumbnail_uri
from workbench.app.figures.token import token_layers, token_regions

__all__ = [
           "attention_map",
           "circuit_figure",
           "head_grid",
           "layer_curves",
           "line_view",
           "lookback_heatmap",
           "patch_overlay",
           "route_figure",
           "score_colors",
           "thumbnail_uri",
           "token_layers",
           "token_regions",
           "token_series",
]
