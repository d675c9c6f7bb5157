"""The numerics warning's advice matches the bundle: "trace again in float32" only where the model did not run
in float32 (for a float32 bundle that advice cannot help)."""

from __future__ import annotations

from workbench.traces.health import Health, health

import workbench


def test_advice_follows_the_dtype_the_model_ran_in():
    broken = dict(non_finite=3, max_normaliser_error=0.5, flagged=["text layer 1"])
    assert "trace again in float32" not in Health(**broken, model_dtype="float32").describe()
    assert "attention mask" in Health(**broken, model_dtype="float32").describe()
    assert "ran in bfloat16, so trace again in float32" in Health(**broken, model_dtype="bfloat16").describe()
    assert "float32" in Health(**broken).describe()  # unknown dtype: both causes are possible


def test_a_float32_bundle_is_not_told_to_trace_in_float32(tmp_path):
    trace = workbench.trace("tiny-gpt2", "hello there")
    trace.meta["checks"].update(healthy=False, non_finite=3, max_normaliser_error=0.5, flagged=["text layer 1"])
    found = health(trace, recheck=False)
    assert trace.model["dtype"] == "float32" and found.model_dtype == "float32" and not found.healthy
    assert "trace again in float32" not in found.describe()
