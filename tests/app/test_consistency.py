"""Small consistency fixes: whole-layer ticks on few-layer figures, and a recompute note that tells a cache hit
from a forward."""

from __future__ import annotations

import re

import numpy as np
import pytest

import workbench
from workbench.app.figures.model import head_grid, layer_curves
from workbench.app.figures.text import lookback_heatmap
from workbench.app.figures.token import token_layers, token_regions


def _tick_positions(axis, low: float, high: float) -> list[float]:
    """Where plotly draws the ticks of a linear-mode axis between low and high."""
    assert axis.tickmode == "linear", "plotly's automatic ticks put half layers on a short axis"
    tick0, step = float(axis.tick0), float(axis.dtick)
    first = int(np.ceil((low - tick0) / step))
    return [tick0 + k * step for k in range(first, int(np.floor((high - tick0) / step)) + 1)]


@pytest.mark.parametrize("n_layers", [2, 3, 30, 80])
def test_layer_axes_tick_whole_layers(n_layers):
    values = np.random.RandomState(0).rand(n_layers, 4)
    figures = {
        "grid y": head_grid(values, label="x").layout.yaxis,
        "curves x": layer_curves({"entropy": values}).layout.xaxis,
        "token layers y": token_layers(values, position=3, texts=list("abcd"), regions=["prompt"] * 4).layout.yaxis,
        "token regions x": token_regions(values, region_names=["a", "b", "c", "d"]).layout.xaxis,
        "lookback y": lookback_heatmap(values, positions=[0, 1, 2, 3], texts=list("abcd")).layout.yaxis,
    }
    for name, axis in figures.items():
        ticks = _tick_positions(axis, -0.5, n_layers - 0.5)
        assert ticks and all(t == int(t) for t in ticks), (name, ticks)
        assert len(ticks) <= 40, name  # thinned on deep models
        limit = 16 if name == "curves x" else 32  # the curves sit in the Model view's narrow side column
        if n_layers <= limit:
            assert ticks == list(range(n_layers)), name
        elif name == "curves x":
            assert len(ticks) <= limit and ticks[0] == 0, ticks


def test_recompute_note_tells_a_cache_hit_from_a_forward(tmp_path):
    from workbench.app.data.service import AppData

    workbench.trace("tiny-llama", "The cat sat on the mat", max_new_tokens=2).save(tmp_path / "s.wbtrace")
    store = AppData(tmp_path)
    first = store.head_map("s", "text", 1, 0)
    second = store.head_map("s", "text", 1, 1)  # same layer: its maps came with the first forward
    assert first.source == second.source == "recomputed"
    assert "cache" not in first.note and "served from the server's cache" in second.note
    seconds = [float(re.search(r"(\d+\.\d+) s", note).group(1)) for note in (first.note, second.note)]
    assert seconds[0] == seconds[1] > 0  # the forward's time, not the 0.00 s of a cache lookup
