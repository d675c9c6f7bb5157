"""The app reads what the workbench's analyses actually write (sinks, routes): their per-head tables appear in
the Model view and routes become graphs linked to heads. Skipped where an analysis is not installed."""

from __future__ import annotations

import pytest
from workbench.app.data import results as results_mod
from workbench.app.data.service import AppData
from workbench.app.figures.graphs import route_elements, strongest_head

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
    elements = route_elements(parsed.value[n - 1], texts=[t.text for t in reread.tokens], target=n - 1)
    attention_nodes = [e["data"]["id"] for e in elements
                       if "source" not in e["data"] and e["data"].get("kind") == "attention"]
    assert attention_nodes and all(strongest_head(elements, node) is not None for node in attention_nodes)
    assert [e["data"]["id"] for e in elements if e.get("classes") == "target"] == [f"I2_{n - 1}"]
