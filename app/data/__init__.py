"""Server-side data for the app (no Dash): bundle catalog, caches, metrics, maps, results, images, jobs.

Public helpers usable from notebooks:
    layer_maps(trace, layer)       full maps of one layer of a statistics-only bundle, recomputed
    token_rows(trace, position)    where one token looks in every layer and head, recomputed
    statistics_metrics(trace)      per-(layer, head) metrics from the statistics
    window(map, q_range, k_range)  a displayable (max-pooled when large) piece of a map
    pool_map(map, side)            a map max-pooled to a thumbnail of at most side x side blocks
"""

from workbench.app.data.maps import Window, window
from workbench.app.data.metrics import Metric, statistics_metrics
from workbench.app.data.recompute import ModelPool, RecomputedLayer, TokenRows, layer_maps, token_rows
from workbench.app.data.thumbnails import pool_map

__all__ = [
           "Metric",
           "ModelPool",
           "RecomputedLayer",
           "TokenRows",
           "Window",
           "layer_maps",
           "pool_map",
           "statistics_metrics",
           "token_rows",
           "window",
]
