"""The `>>>` examples in the public API's docstrings run and print what they say (tiny and planted models only).

Each listed module must hold at least one example: the list is the documented public surface.
"""

from __future__ import annotations

import doctest
import importlib
import io
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
MODULES = [
    "workbench", "workbench.capture.tracer", "workbench.traces.trace", "workbench.traces.bundle",
    "workbench.models.loading", "workbench.analyses.sinks", "workbench.analyses.routes",
    "workbench.analyses.circuits", "workbench.analyses.divergence", "workbench.analyses.rollout",
    "workbench.analyses.funnel", "workbench.analyses.basin", "workbench.kernels.api",
    "workbench.kernels.forward", "workbench.kernels.fused_cpu", "workbench.probes", "workbench.probes.roc", "workbench.app.notebook",
    "workbench.app.figures.probes", "workbench.threads",
]


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name, monkeypatch):
    import torch

    monkeypatch.chdir(ROOT)  # examples name shipped files relative to the repository root
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        module = importlib.import_module(name)
        tests = [t for t in doctest.DocTestFinder().find(module, name) if t.examples]
        assert tests, f"{name} has no runnable example in its docstrings"
        runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
        report = io.StringIO()
        for test in tests:
            runner.run(test, out=report.write)
    finally:
        torch.set_num_threads(threads)
    assert runner.failures == 0, report.getvalue()
