"""Cross-backend equality on real weights: SmolLM2-135M through HF capture, nnsight and TransformerLens."""

from __future__ import annotations

import pytest

import workbench
from tests.workbench.capture.backends.conftest import assert_same_trace
from workbench.capture import Tracer

pytestmark = [pytest.mark.slow, pytest.mark.filterwarnings("ignore::FutureWarning")]


@pytest.mark.parametrize("backend", ["nnsight", "lens"])
def test_smollm2_statistics_equal_across_backends(models, backend):
    loaded = models("smollm2")
    options = dict(max_new_tokens=2, hidden_states=True)
    expected = workbench.trace(loaded, "The capital of France is", **options)
    actual = Tracer.open(loaded, backend=backend).trace("The capital of France is", **options)
    assert actual.n_layers() == 30 and actual.n_heads() == 9
    # fp32 statistics within 1e-5; the residual stream of a 30-layer model within 1e-3 relative.
    assert_same_trace(actual, expected, stats_tol=1e-5, other_tol=1e-3)
