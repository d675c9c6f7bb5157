"""AUROC, grouped folds, and training / evaluating Lookback Lens probes on a dataset's held-out split.

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


def _class_counts(y: np.ndarray) -> dict:
    return {"n": int(len(y)), "hallucinated": int(np.sum(y == 1)), "grounded": int(np.sum(y == 0))}


def generation_level(ex, scores: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per dataset row: the highest example score (window probes), and the row's label."""
    rows = np.unique(ex.row)
    best = np.full(rows.max() + 1, -np.inf)
    np.maximum.at(best, ex.row, scores)
    return best[rows], labels[rows]


def train_lookback(data, *, features: str = "span", variant: str = "context", window: int = 8,
                   span: str = "answer", C="auto", seed: int = 0, test_fraction: float = 0.2,
                   tasks: str | None = None, shuffle_labels: bool = False):
    """Fit a Lookback Lens on the training groups of `data` and measure it on its held-out groups.

    Returns (LookbackProbe, report). shuffle_labels permutes the generation labels (and their token labels)
    across rows first: the leakage check, whose held-out AUROC must stay near 0.5.
    """
    from workbench.probes.dataset import split
    from workbench.probes.lookback import LookbackProbe, examples, fit

    if shuffle_labels:
        data = shuffled(data, seed)
    selected = task_mask(data.tasks, tasks)
    test_rows = split(data.groups, seed=seed, test_fraction=test_fraction)
    if not (selected & test_rows).any():
        raise InputError(f"the held-out split of {data.path} is empty; use more inputs or a larger --test-fraction")
    train_ex = examples(data, features=features, variant=variant, window=window, span=span,
                        rows=np.nonzero(selected & ~test_rows)[0])
    test_ex = examples(data, features=features, variant=variant, window=window, span=span,
                       rows=np.nonzero(selected & test_rows)[0])
    model, chosen_c, cv = fit(train_ex.X, train_ex.y, data.groups[train_ex.row], C=C, seed=seed)
    config = {
        "detector": "lookback", "features": features, "window": window if features == "window" else None,
        "span": span if features == "span" else None, "variant": variant, "model": data.meta["model"],
        "layers": data.meta["layers"], "heads": data.meta["heads"], "dataset": str(data.path),
        "fingerprint": data.fingerprint(), "tasks": tasks, "split": {"seed": seed, "test_fraction": test_fraction},
        "C": chosen_c, "cv_auroc": {str(c): s for c, s in cv.items()}, "label": "1 = hallucinated",
    }
    probe = LookbackProbe.from_pipeline(model, config)
    report = {"train": {**_class_counts(train_ex.y), "auroc": auroc(train_ex.y, probe.score(train_ex.X))}}
    report["test"] = score_examples(probe, test_ex, data.labels)
    probe.config["metrics"] = report
    return probe, report


def score_examples(probe, ex, labels: np.ndarray) -> dict:
    """AUROC of the probe and of each baseline on the same examples (plus generation level for windows)."""
    scores = probe.score(ex.X)
    out = {**_class_counts(ex.y), "auroc": auroc(ex.y, scores),
           "baselines": {name: auroc(ex.y, values) for name, values in ex.baselines.items()}}
    if probe.config["features"] == "window":
        best, y = generation_level(ex, scores, labels)
        out["generation"] = {**_class_counts(y), "auroc": auroc(y, best)}
        out["generation"]["baselines"] = {}
        for name, values in ex.baselines.items():
            best, y = generation_level(ex, values, labels)
            out["generation"]["baselines"][name] = auroc(y, best)
    return out


def eval_lookback(probe, data, *, tasks: str | None = None) -> dict:
    """A trained probe on `data`: its held-out split when it was trained on this dataset, else every row; the
    probe's training tasks unless `tasks` names others."""
    from workbench.probes.dataset import split
    from workbench.probes.lookback import examples

    probe.check_model(data.meta["layers"], data.meta["heads"], f"{data.path} ({data.meta['model']})")
    rows = task_mask(data.tasks, tasks if tasks is not None else probe.config.get("tasks"))
    same = probe.config.get("fingerprint") == data.fingerprint()
    if same:
        seed, fraction = probe.config["split"]["seed"], probe.config["split"]["test_fraction"]
        rows &= split(data.groups, seed=seed, test_fraction=fraction)
    if not rows.any():
        raise InputError(f"no rows of {data.path} to evaluate on (after --tasks and the held-out split)")
    ex = examples(data, features=probe.config["features"], variant=probe.config["variant"],
                  window=probe.config.get("window") or 8, span=probe.config.get("span") or "answer",
                  rows=np.nonzero(rows)[0])
    return {"rows": "held-out split" if same else "all rows (transfer)", **score_examples(probe, ex, data.labels)}


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
