"""`Probe`: one trained detector of any kind, with one way to train, save, load, evaluate and apply it.

    probe, report = train(dataset, "lookback", features="window")   # report: held-out AUROCs
    probe.save("lookback.probe"); probe = Probe.load("lookback.probe")
    probe.evaluate(other_dataset)       # transfer: every row; the training dataset: its held-out split
    probe.score_trace(trace)            # Lookback Lens only: per-token scores for results/lookback.json
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from workbench.probes.store import DETECTORS, StoredProbe

from workbench.errors import InputError


class Probe:
    def __init__(self, stored: StoredProbe):
        self.stored = stored

    @property
    def detector(self) -> str:
        return self.stored.detector

    @property
    def config(self) -> dict:
        return self.stored.config

    def lookback(self):
        from workbench.probes.lookback import LookbackProbe

        if self.detector != "lookback":
            raise InputError(f"per-token scores come from Lookback Lens probes, not from a {self.detector} probe; "
                             "train one with `workbench probe train --detector lookback`")
        return LookbackProbe(self.config, self.stored.tensors)

    # -- persistence ----------------------------------------------------------------------------------
    def save(self, path: str | Path, *, force: bool = False) -> Path:
        from workbench.probes.store import save

        return save(self.stored, path, force=force)

    @classmethod
    def load(cls, path: str | Path) -> "Probe":
        from workbench.probes.store import load

        probe = cls(load(path))
        if probe.detector == "lookback":
            missing = {"scaler_mean", "scaler_scale", "coef", "intercept"} - set(probe.stored.tensors)
            if missing or not {"variant", "features", "layers", "heads"} <= set(probe.config):
                raise InputError(f"{path} is an incomplete Lookback Lens probe; train it again")
        return probe

    # -- use --------------------------------------------------------------------------------------------
    def score_trace(self, trace) -> dict:
        return self.lookback().score_trace(trace)

    def evaluate(self, data, *, tasks: str | None = None) -> dict:
        """Held-out AUROC on `data` (its test split if the probe was trained on it, else all rows)."""
        from workbench.probes.dataset import split
        from workbench.probes.evaluate import auroc, class_counts, task_mask
        from workbench.probes.lookback_training import eval_lookback

        if self.detector == "lookback":
            return eval_lookback(self.lookback(), data, tasks=tasks)
        rows = task_mask(data.tasks, tasks if tasks is not None else self.config.get("tasks"))
        same = self.config.get("fingerprint") == data.fingerprint()
        if same:
            rows &= split(data.groups, seed=self.config["split"]["seed"],
                          test_fraction=self.config["split"]["test_fraction"])
        index = np.nonzero(rows)[0]
        if not len(index):
            raise InputError(f"no rows of {data.path} to evaluate on (after --tasks and the held-out split)")
        scores = self.score_rows(data, index)
        y = data.labels[index]
        return {"rows": "held-out split" if same else "all rows (transfer)", **class_counts(y),
                "auroc": auroc(y, scores)}

    def score_rows(self, data, rows: np.ndarray) -> np.ndarray:
        if self.detector == "nonkes":
            from workbench.probes.nonkes import score_nonkes

            return score_nonkes(self.stored, data, rows)
        if self.detector == "attention-graph":
            from workbench.probes.attention_graph import score_attention_graph

            return score_attention_graph(self.stored, data, rows)
        raise InputError("Lookback Lens probes score spans or windows; use evaluate()")


def train(data, detector: str = "lookback", **options) -> tuple[Probe, dict]:
    """Train `detector` on the training groups of `data`; returns the probe and its report (held-out AUROCs)."""
    if detector not in DETECTORS:
        raise InputError(f"unknown detector {detector!r}; use one of {', '.join(DETECTORS)}")
    if detector == "lookback":
        from workbench.probes.lookback_training import train_lookback
        from workbench.probes.store import StoredProbe

        lookback, report = train_lookback(data, **options)
        return Probe(StoredProbe(lookback.config, lookback.tensors())), report
    if detector == "nonkes":
        from workbench.probes.nonkes import train_nonkes

        stored, report = train_nonkes(data, **options)
    else:
        from workbench.probes.attention_graph import train_attention_graph

        stored, report = train_attention_graph(data, **options)
    return Probe(stored), report


def load_probe(path: str | Path) -> Probe:
    return Probe.load(path)
