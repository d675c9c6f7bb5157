"""ROC curves of a trained probe: the points behind the AUROC that `Probe.evaluate` reports, on the same rows.

    curve = roc_curve(probe, data)          # {"fpr", "tpr", "thresholds", "auroc", "n", "hallucinated", "rows"}
"""

from __future__ import annotations

from typing import Literal

import numpy as np

from workbench.errors import InputError


def scores(probe, data, *, tasks: str | None = None,
           level: Literal["examples", "generation"] = "examples") -> tuple[np.ndarray, np.ndarray, str]:
    """(labels, scores, rows) where `Probe.evaluate` measures: the held-out split of the probe's own dataset,
    every row of another. Lookback Lens scores its examples (spans or windows); level="generation" takes each
    generation's highest example score. Graph detectors score generations. Label 1 = hallucinated."""
    from workbench.probes.dataset import split
    from workbench.probes.evaluate import generation_level, task_mask

    same = probe.config.get("fingerprint") == data.fingerprint()
    rows = task_mask(data.tasks, tasks if tasks is not None else probe.config.get("tasks"))
    if same:
        rows &= split(data.groups, seed=probe.config["split"]["seed"], test_fraction=probe.config["split"]["test_fraction"])
    if not rows.any():
        raise InputError(f"no rows of {data.path} to score (after the task selection and the held-out split)")
    where = "held-out split" if same else "all rows (transfer)"
    if probe.detector != "lookback":
        index = np.nonzero(rows)[0]
        return data.labels[index], probe.score_rows(data, index), where
    from workbench.probes.lookback import examples

    lookback = probe.lookback()
    lookback.check_model(data.meta["layers"], data.meta["heads"], f"{data.path} ({data.meta['model']})")
    ex = examples(data, features=probe.config["features"], variant=probe.config["variant"],
                  window=probe.config.get("window") or 8, span=probe.config.get("span") or "answer",
                  rows=np.nonzero(rows)[0])
    values = lookback.score(ex.X)
    if level == "generation":
        values, labels = generation_level(ex, values, data.labels)
        return labels, values, where
    return ex.y, values, where


def roc_curve(probe, data, *, tasks: str | None = None, level: Literal["examples", "generation"] = "examples") -> dict:
    """False / true positive rates of `probe` on `data` (see `scores`), with the AUROC they enclose.

    >>> import numpy as np
    >>> from workbench.probes.roc import curve_of
    >>> curve = curve_of(np.array([0, 0, 1, 1]), np.array([0.1, 0.4, 0.35, 0.8]))
    >>> curve["auroc"], curve["tpr"].tolist()
    (0.75, [0.0, 0.5, 0.5, 1.0, 1.0])
    """
    labels, values, where = scores(probe, data, tasks=tasks, level=level)
    return {**curve_of(labels, values), "rows": where, "detector": probe.detector}


def curve_of(labels: np.ndarray, values: np.ndarray) -> dict:
    """ROC points of scores against labels (1 = positive); refuses a single class (no curve exists)."""
    from sklearn.metrics import roc_auc_score
    from sklearn.metrics import roc_curve as sk_roc_curve

    labels = np.asarray(labels).astype(np.int64)
    values = np.nan_to_num(np.asarray(values, np.float64), nan=0.0)
    if len(set(labels.tolist())) < 2:
        raise InputError("a ROC curve needs both hallucinated and grounded examples; use more inputs")
    fpr, tpr, thresholds = sk_roc_curve(labels, values)
    return {"fpr": fpr, "tpr": tpr, "thresholds": thresholds, "auroc": float(roc_auc_score(labels, values)),
            "n": len(labels), "hallucinated": int(labels.sum())}
