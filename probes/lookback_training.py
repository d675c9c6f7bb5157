"""Training a Lookback Lens on a dataset's training groups and measuring it on its held-out groups.

Every split is by group (an input, or a scene with all its questions), never by token; see `evaluate`.
"""

from __future__ import annotations

import numpy as np

from workbench.errors import InputError
from workbench.probes.evaluate import auroc, class_counts, generation_level, shuffled, task_mask
from workbench.probes.lookback import LookbackProbe, examples, fit


def train_lookback(data, *, features: str = "span", variant: str = "context", window: int = 8,
                   span: str = "answer", C="auto", seed: int = 0, test_fraction: float = 0.2,
                   tasks: str | None = None, shuffle_labels: bool = False):
    """Fit a Lookback Lens on the training groups of `data` and measure it on its held-out groups.

    Returns (LookbackProbe, report). shuffle_labels permutes the generation labels (and their token labels)
    across rows first: the leakage check, whose held-out AUROC must stay near 0.5.
    """
    from workbench.probes.dataset import split

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
    report = {"train": {**class_counts(train_ex.y), "auroc": auroc(train_ex.y, probe.score(train_ex.X))}}
    report["test"] = score_examples(probe, test_ex, data.labels)
    probe.config["metrics"] = report
    return probe, report


def score_examples(probe, ex, labels: np.ndarray) -> dict:
    """AUROC of the probe and of each baseline on the same examples (plus generation level for windows)."""
    scores = probe.score(ex.X)
    out = {**class_counts(ex.y), "auroc": auroc(ex.y, scores),
           "baselines": {name: auroc(ex.y, values) for name, values in ex.baselines.items()}}
    if probe.config["features"] == "window":
        best, y = generation_level(ex, scores, labels)
        out["generation"] = {**class_counts(y), "auroc": auroc(y, best)}
        out["generation"]["baselines"] = {}
        for name, values in ex.baselines.items():
            best, y = generation_level(ex, values, labels)
            out["generation"]["baselines"][name] = auroc(y, best)
    return out


def eval_lookback(probe, data, *, tasks: str | None = None) -> dict:
    """A trained probe on `data`: its held-out split when it was trained on this dataset, else every row; the
    probe's training tasks unless `tasks` names others."""
    from workbench.probes.dataset import split

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
