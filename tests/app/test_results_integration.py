"""The app reads what the workbench's analyses actually write (sinks, routes): their per-head tables appear in
the Model view and routes become graphs linked to heads. Skipped where an analysis is not installed."""

from __future__ import annotations

import pytest
from workbench.app.data import results as results_mod
from workbench.app.data.service import AppData
from workbench.app.figures.routes import route_figure

import workbench

pytestmark = pytest.mark.slow


def test_sinks_and_routes_results_feed_the_views(tmp_path):
    sinks = pytest.importorskip("workbench.analyses.sinks")
    routes = pytest.importorskip("workbench.analyses.routes")
    trace = workbench.trace("tiny-llama", "The cat sat on the mat. The cat sat on the", max_new_tokens=3,
                            decomposition=True, hidden_states=True)
    trace.save(tmp_path / "t.wbtrace")
    trace = workbench.load(tmp_path / "t.wbtrace")
    trace.add_result("sinks", sinks.analyse(trace).to_json())
    trace.add_result("routes", routes.analyse(trace, position=[-1, -2]).to_json())
    metrics, warnings = AppData(tmp_path).metrics("t")
    assert not warnings
    for name in ("result:sinks:top_alpha", "result:sinks:hidden_sinks", "result:routes:route_frequency",
                 "result:routes:pattern_previous_token"):
        assert metrics[name].values.shape == (3, 6), name
    assert "missing:routes" not in metrics and "missing:sinks" not in metrics
    reread = workbench.load(tmp_path / "t.wbtrace")  # as the app sees it: JSON from disk
    n = len(reread.tokens)
    parsed = results_mod.routes(reread.results["routes"], n)
    assert sorted(parsed.value) == [n - 2, n - 1] and not parsed.warnings
    fig = route_figure(parsed.value[n - 1], texts=[t.text for t in reread.tokens], n_layers=3, root=f"I2_{n - 1}")
    attention = next(t for t in fig.data if t.meta == "nodes" and t.name.startswith("after attention"))
    assert all(custom[1] is not None for custom in attention.customdata)  # every attention node opens a head
    outlined = [text.split("</b>")[0][3:] for t in fig.data if t.meta == "nodes"
                for text, width in zip(t.hovertext, t.marker.line.width) if width > 1]
    assert outlined == [f"I2_{n - 1}"]
