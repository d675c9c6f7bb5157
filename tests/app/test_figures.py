"""Pure figure builders: integer position axes (never token strings), escaped token text, pooled windows that
stay small at any length, and the marks (sinks, regions, selections) where they belong."""

from __future__ import annotations

import numpy as np
import plotly.graph_objects as go
import pytest
import torch
from workbench.app.data.maps import window
from workbench.app.figures import (
    attention_map,
    head_grid,
    layer_curves,
    line_view,
    lookback_heatmap,
    patch_overlay,
    score_colors,
    token_layers,
    token_regions,
    token_series,
)
from workbench.app.figures.common import region_runs, token_label
from workbench.app.figures.head import head_statistics

TEXTS = ["<s>", "<b>bold</b>", " the", " the", "\n", " cat"] * 5
REGIONS = ["special"] + ["prompt"] * 20 + ["generated"] * 9


def _numeric_axes(fig: go.Figure) -> None:
    """No trace uses strings as x or y, and no axis is categorical."""
    for trace in fig.data:
        for axis in ("x", "y"):
            values = getattr(trace, axis, None)
            if values is None:
                continue
            flat = [v for v in np.asarray(values, dtype=object).ravel() if v is not None]
            assert all(isinstance(v, (int, float, np.integer, np.floating)) for v in flat), f"{trace.type}.{axis}"
    for name in dir(fig.layout):
        if name.startswith(("xaxis", "yaxis")) and getattr(fig.layout, name, None) is not None:
            assert getattr(fig.layout, name).type != "category"


def test_head_grid_is_layer_by_head_with_integer_axes():
    values = np.arange(12, dtype=float).reshape(4, 3)
    values[0, 0] = np.nan
    fig = head_grid(values, label="sink", selected=(2, 1))
    _numeric_axes(fig)
    assert np.asarray(fig.data[0].z).shape == (4, 3) and fig.layout.yaxis.autorange == "reversed"
    assert fig.layout.shapes[0].x0 == 0.5 and fig.layout.shapes[0].y0 == 1.5
    curves = layer_curves({"sink": values, "entropy": values * 2}, secondary=("entropy",))
    _numeric_axes(curves)
    assert curves.data[-1].yaxis == "y2"


def test_attention_map_small_window_carries_escaped_token_text_and_marks():
    n = len(TEXTS)
    full = torch.softmax(torch.randn(n, n), -1)
    win = window(full)
    fig = attention_map(win, texts=TEXTS, regions=REGIONS, sink_keys=[0, 99], selected_query=7)
    _numeric_axes(fig)
    custom = np.asarray(fig.data[0].customdata, dtype=object)
    assert custom.shape == (n, n, 2) and custom[1, 0, 0] == "&lt;b&gt;bold&lt;/b&gt;"
    assert all("<b>bold" not in str(t) for t in (fig.layout.xaxis.ticktext or ()))
    bands = [s for s in fig.layout.shapes if s.type == "rect" and s.fillcolor]
    assert len(bands) == 2 * len(region_runs(REGIONS, 0, n))
    assert [a.text for a in fig.layout.annotations] == ["sink"]  # key 99 is outside
    assert any(s.type == "rect" and s.y0 == 6.5 and s.line.color for s in fig.layout.shapes if not s.fillcolor)


def test_attention_map_of_a_long_sequence_is_pooled_and_small():
    n = 4096
    full = torch.rand(n, n)
    texts, regions = ["x"] * n, ["prompt"] * n
    fig = attention_map(window(full), texts=texts, regions=regions)
    assert max(np.asarray(fig.data[0].z).shape) <= 400
    assert "blocks of" in fig.data[0].hovertemplate and fig.data[0].customdata is None
    assert len(fig.to_json()) < 3_000_000
    zoomed = attention_map(window(full, (100, 140), (90, 130)), texts=texts, regions=regions)
    assert np.asarray(zoomed.data[0].z).shape == (41, 41) and list(zoomed.layout.xaxis.range) == [89.5, 130.5]


def test_line_view_draws_one_segment_per_weight_above_the_floor():
    weights = np.zeros((6, 6))
    weights[np.arange(6), 0] = 0.5
    weights[3, 2] = 0.05
    weights[4, 1] = 0.01  # below min_weight
    fig = line_view(weights, start=10, texts=TEXTS[:16], regions=REGIONS[:16], selected_query=13)
    segments = sum(sum(1 for v in trace.x if v is None) for trace in fig.data if trace.mode == "lines")
    assert segments == 7
    highlighted = [t for t in fig.data if t.mode == "lines" and t.line.color == "#ff7f0e"]
    assert sum(sum(1 for v in t.x if v is None) for t in highlighted) == 2  # query 13 -> keys 10 and 12
    _numeric_axes(fig)


def test_token_and_statistics_figures():
    rows = np.random.rand(4, 30)
    fig = token_layers(rows, position=12, texts=TEXTS, regions=REGIONS)
    _numeric_axes(fig)
    assert np.asarray(fig.data[0].customdata).shape == (4, 30)
    pooled = token_layers(rows[:, :10], position=12, texts=TEXTS, regions=REGIONS, step=3)
    assert "blocks of 3" in pooled.data[0].hovertemplate
    shares = np.zeros((4, 5))
    shares[:, 3] = 1
    assert [t.name for t in token_regions(shares, region_names=["special", "system", "image", "prompt",
                                                                "generated"]).data] == ["prompt"]
    _numeric_axes(head_statistics(np.random.rand(30), np.random.rand(30), texts=TEXTS, regions=REGIONS))


def test_patch_overlay_draws_the_image_below_and_outlines_sinks():
    grid = np.random.rand(4, 4)
    fig = patch_overlay(grid, image_uri="data:image/png;base64,AAAA", marked=[(1, 2)], positions=np.arange(16).reshape(4, 4))
    assert len(fig.layout.images) == 1 and fig.layout.images[0].layer == "below"
    assert fig.layout.shapes[0].x0 == 1.5 and fig.layout.shapes[0].y0 == 0.5
    assert fig.data[0].opacity < 1
    assert patch_overlay(grid).data[0].opacity == 1.0


def test_text_scores_and_curves():
    items = score_colors([(5, "a"), (6, "b"), (7, "c")], {5: 0.0, 6: 1.0}, vmin=0, vmax=1)
    assert items[2]["color"] is None and items[0]["color"] != items[1]["color"]
    flipped = score_colors([(5, "a")], {5: 0.0}, vmin=0, vmax=1, reverse=True)
    assert flipped[0]["color"] == items[1]["color"]
    fig = token_series({"lookback": {5: 0.5, 6: 0.7}, "vhd": {6: 3.0}}, texts=TEXTS, positions=[5, 6],
                       secondary=("vhd",))
    _numeric_axes(fig)
    assert fig.layout.yaxis2.overlaying == "y"
    _numeric_axes(lookback_heatmap(np.random.rand(3, 2), positions=[5, 6], texts=TEXTS))


@pytest.mark.parametrize("text,label", [(" the", "␣the"), ("\n", "⏎"), ("<script>", "&lt;script&gt;"),
                                        ("a" * 40, "a" * 13 + "…"), ("", "∅")])
def test_token_labels_are_visible_and_escaped(text, label):
    assert token_label(text) == label
