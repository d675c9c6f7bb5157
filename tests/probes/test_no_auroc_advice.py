"""A split with one class only gets no AUROC; the report says which class is missing and what to do."""

from __future__ import annotations

import io

import numpy as np
from rich.console import Console

from workbench.cli.probe_command import _print_report
from workbench.probes.evaluate import auroc, class_counts


def test_one_class_test_split_says_what_is_missing_and_what_to_do():
    rng = np.random.RandomState(0)
    y_train, y_test = np.array([0, 1] * 10), np.zeros(7, dtype=int)  # the held-out groups were all grounded
    report = {"train": {**class_counts(y_train), "auroc": auroc(y_train, rng.rand(20))},
              "test": {**class_counts(y_test), "auroc": auroc(y_test, rng.rand(7))}}
    assert report["test"]["auroc"] is None and report["train"]["auroc"] is not None
    out = io.StringIO()
    _print_report(Console(file=out, width=200), "lookback", report)
    lines = [line for line in out.getvalue().splitlines() if "AUROC n/a" in line]
    assert len(lines) == 1 and lines[0].startswith("test AUROC n/a: its 7 examples hold no hallucinated one")
    assert "--test-fraction" in lines[0] and "--seed" in lines[0]
