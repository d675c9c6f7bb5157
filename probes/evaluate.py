"""Measuring detectors: AUROC, grouped folds, task selection, class counts, generation-level scores and the
label-shuffled dataset of the leakage check. Training and evaluating a Lookback Lens on a dataset's splits is
`lookback_training`.

Every split is by group (an input, or a scene with all its questions), never by token: examples of one
generation (its sliding windows) share features and labels, so a token-level split would leak.
"""

from __future__ import annotations

import numpy as np

from workbench.errors import InputError


def auroc(y: np.ndarray, scores: np.ndarray) -> float | None:
    """Area under the ROC curve; None when only one class is present."""
    from sklearn.metrics import roc_auc_score

    y = np.asarray(y)
    if len(y) == 0 or len(set(y.tolist())) < 2:
        return None
    return float(roc_auc_score(y, np.nan_to_num(np.asarray(scores, np.float64), nan=0.0)))


def grouped_folds(groups: np.ndarray, y: np.ndarray, *, n_splits: int = 5, seed: int = 0):
    """(train, test) index arrays of up to n_splits folds over whole groups; folds lacking a class are skipped."""
    unique = np.array(sorted(set(np.asarray(groups).tolist())))
    if len(unique) < 2:
        return
    order = np.random.RandomState(seed).permutation(len(unique))
    fold_of = {group: i % min(n_splits, len(unique)) for i, group in zip(range(len(unique)), unique[order])}
    folds = np.array([fold_of[g] for g in groups])
    for fold in range(min(n_splits, len(unique))):
        test = np.nonzero(folds == fold)[0]
        train = np.nonzero(folds != fold)[0]
        if len(set(y[test].tolist())) == 2 and len(set(y[train].tolist())) == 2:
            yield train, test


def task_mask(tasks: np.ndarray, selection: str | None) -> np.ndarray:
    """Rows whose task starts with one of the comma-separated prefixes (all rows for None)."""
    if not selection:
        return np.ones(len(tasks), bool)
    prefixes = [p.strip() for p in selection.split(",") if p.strip()]
    mask = np.array([any(str(t).startswith(p) for p in prefixes) for t in tasks], bool)
    if not mask.any():
        known = ", ".join(sorted(set(tasks)))
        raise InputError(f"no rows match --tasks {selection!r}; the dataset's tasks are {known}")
    return mask


def class_counts(y: np.ndarray) -> dict:
    """{"n", "hallucinated", "grounded"}: the class sizes that every report lists beside its AUROC."""
    return {"n": int(len(y)), "hallucinated": int(np.sum(y == 1)), "grounded": int(np.sum(y == 0))}


def generation_level(ex, scores: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per dataset row: the highest example score (window probes), and the row's label."""
    rows = np.unique(ex.row)
    best = np.full(rows.max() + 1, -np.inf)
    np.maximum.at(best, ex.row, scores)
    return best[rows], labels[rows]


def shuffled(data, seed: int):
    """The dataset with its generation labels permuted across rows (token labels follow their generation)."""
    import pyarrow as pa
    from workbench.probes.dataset import ProbeDataset

    order = np.random.RandomState(seed + 1).permutation(len(data))
    labels = data.labels[order]
    token_labels = [np.full(int(n), label, np.int8) for n, label in zip(data.column("n_generated"), labels)]
    table = data.table.set_column(data.table.column_names.index("label"), "label", pa.array(labels.astype(np.int8)))
    table = table.set_column(table.column_names.index("token_labels"), "token_labels",
                             pa.array([t.tolist() for t in token_labels], type=pa.large_list(pa.int8())))
    return ProbeDataset(data.path, data.meta, table)
