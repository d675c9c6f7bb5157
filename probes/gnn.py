"""Shared pieces of the graph detectors: seeding, standardisation, weights as numpy, epoch selection."""

from __future__ import annotations

import copy
from dataclasses import dataclass

import numpy as np

from workbench.errors import InputError


def require_torch_geometric():
    try:
        import torch_geometric  # noqa: F401
    except ImportError:
        raise InputError("the graph detectors need torch-geometric: pip install 'attention-workbench[gnn]'") from None


def seed_everything(seed: int) -> None:
    import torch

    torch.manual_seed(seed)
    np.random.seed(seed)


def standardiser(X: np.ndarray, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(mean, scale) over the given rows; constant columns get scale 1."""
    mean = X[rows].mean(0)
    scale = X[rows].std(0)
    return mean.astype(np.float32), np.where(scale > 1e-8, scale, 1.0).astype(np.float32)


def state_to_numpy(module, prefix: str = "model.") -> dict[str, np.ndarray]:
    return {prefix + name: value.detach().cpu().numpy().copy() for name, value in module.state_dict().items()}


def load_state(module, tensors: dict[str, np.ndarray], prefix: str = "model.") -> None:
    import torch

    state = {name[len(prefix):]: torch.from_numpy(np.array(value)) for name, value in tensors.items()
             if name.startswith(prefix)}
    try:
        module.load_state_dict(state)
    except RuntimeError as error:
        raise InputError(f"the probe's weights do not fit its declared architecture ({str(error).splitlines()[0]}); "
                         "the file is damaged or from another version, train it again") from None


def validation_split(groups: np.ndarray, train_rows: np.ndarray, seed: int, fraction: float = 0.15) -> np.ndarray:
    """A validation subset of the training rows (by group) for epoch selection; never touches the test rows."""
    from workbench.probes.dataset import split

    val = np.zeros(len(groups), bool)
    val[train_rows] = split(groups[train_rows], seed=seed + 1000, test_fraction=fraction)
    return val


@dataclass
class TrainingSplit:
    """What a graph detector trains on: the task-selected dataset and its rows split by group (the split seed)."""

    data: object  # the dataset restricted to the chosen tasks (labels shuffled when asked)
    fingerprint: str  # of the whole dataset: evaluate() must recognise it to use the held-out split
    labels: np.ndarray
    test: np.ndarray  # bool per row: held out
    train_rows: np.ndarray  # every row not held out
    val_rows: np.ndarray  # part of train_rows, by group, for epoch selection
    fit_rows: np.ndarray  # train_rows minus val_rows: what gradients see

    def report(self, scores: np.ndarray) -> dict:
        """Class counts and AUROC of the scores on the fit, validation and held-out rows."""
        from workbench.probes.evaluate import auroc, class_counts

        y = self.labels
        return {name: {**class_counts(y[rows]), "auroc": auroc(y[rows], scores[rows])}
                for name, rows in (("train", self.fit_rows), ("validation", self.val_rows), ("test", self.test))}


def training_split(data, *, seed: int, test_fraction: float, tasks: str | None,
                   shuffle_labels: bool) -> TrainingSplit:
    """Seed everything, optionally shuffle labels (the leakage check), select tasks and split by group."""
    from workbench.probes.dataset import split
    from workbench.probes.evaluate import shuffled, task_mask

    seed_everything(seed)
    if shuffle_labels:
        data = shuffled(data, seed)
    fingerprint = data.fingerprint()
    data = data.select(task_mask(data.tasks, tasks))
    labels, groups = data.labels, data.groups
    test = split(groups, seed=seed, test_fraction=test_fraction)
    train_rows = np.nonzero(~test)[0]
    val = validation_split(groups, train_rows, seed)
    fit_rows = np.nonzero(~test & ~val)[0]
    if len(set(labels[fit_rows].tolist())) < 2:
        raise InputError("the training split holds only one class; use more inputs or another split seed")
    return TrainingSplit(data, fingerprint, labels, test, train_rows, np.nonzero(val)[0], fit_rows)


class BestEpoch:
    """Keeps the weights of the epoch with the best validation AUROC (ties: the earlier epoch)."""

    def __init__(self):
        self.score, self.epoch, self.state = -np.inf, -1, None

    def update(self, module, score: float | None, epoch: int) -> None:
        value = -np.inf if score is None else score
        if self.state is None or value > self.score:
            self.score, self.epoch, self.state = value, epoch, copy.deepcopy(module.state_dict())

    def restore(self, module) -> None:
        if self.state is not None:
            module.load_state_dict(self.state)


def pos_weight(y: np.ndarray):
    import torch

    positives = max(int((y == 1).sum()), 1)
    return torch.tensor([max((y == 0).sum(), 1) / positives], dtype=torch.float32)
