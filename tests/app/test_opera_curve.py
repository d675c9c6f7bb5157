"""The Hallucination page's OPERA curve: each generated token's over-trust score lands on that token's position
(the trace's generated range), and a bundle without the result gets no curve and no extra hint."""

from __future__ import annotations

import math

import workbench
from workbench.analyses import opera
from workbench.capture import Tracer


def test_opera_scores_sit_on_the_generated_positions(tmp_path):
    from workbench.app.pages.hallucination import series_for

    trace = workbench.trace("planted-sink", "Hello there. my friend", max_new_tokens=6, raw=True)
    trace.save(tmp_path / "t.wbtrace")
    trace = workbench.load(tmp_path / "t.wbtrace")
    series, notes = series_for(trace)
    assert "opera" not in series and "opera" not in str(notes)
    result = opera.analyse(trace, tracer=Tracer.open("planted-sink"))
    trace.add_result("opera", result.to_json())
    series, _ = series_for(workbench.load(tmp_path / "t.wbtrace"))
    start, end = trace.generation["start"], trace.generation["end"]
    expected = {start + i: float(v) for i, v in enumerate(result.log10_score) if math.isfinite(float(v))}
    assert set(series["opera"]) == set(range(start, end)) == set(expected)
    assert all(abs(series["opera"][p] - expected[p]) < 1e-5 for p in expected)
