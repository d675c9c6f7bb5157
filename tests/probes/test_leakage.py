"""No label leakage: labels independent of the traces give held-out AUROC ~ 0.5; planted labels are found.

Splits are by input (group), never by token: the sliding windows of one generation share its label and
nearly share its features, so a token-level split would score far above 0.5 on random labels.
"""

from __future__ import annotations

import numpy as np
import pytest
from workbench.probes.dataset import split
from workbench.probes.lookback import examples, window_means

from tests.probes.labels import with_labels, with_token_labels
from workbench import probes


def random_labels(data, seed: int) -> np.ndarray:
    return np.random.RandomState(seed).randint(0, 2, len(data))


@pytest.mark.parametrize("features", ["span", "window"])
def test_lookback_random_labels_score_chance(kv_dataset, features):
    scores = []
    for seed in range(5):
        data = with_labels(kv_dataset, random_labels(kv_dataset, 100 + seed))
        _, report = probes.train(data, "lookback", features=features, seed=seed, test_fraction=0.5)
        scores.append(report["test"]["auroc"])
    assert abs(np.mean(scores) - 0.5) < 0.12, scores


def test_shuffle_labels_option_permutes_across_inputs(kv_dataset):
    planted = planted_labels(kv_dataset)
    data = with_labels(kv_dataset, planted)
    _, report = probes.train(data, "lookback", features="span", test_fraction=0.5, shuffle_labels=True)
    assert abs(report["test"]["auroc"] - 0.5) < 0.25, report


def planted_labels(data) -> np.ndarray:
    """1 where one head's mean lookback ratio over the answer is above the median: learnable from features."""
    values = np.array([r[:, 2, 3].mean() for r in data.per_token("lookback_context")])
    return (values > np.median(values)).astype(int)


def test_lookback_finds_planted_span_labels(kv_dataset):
    data = with_labels(kv_dataset, planted_labels(kv_dataset))
    _, report = probes.train(data, "lookback", features="span", test_fraction=0.5)
    assert report["test"]["auroc"] > 0.85, report


def test_lookback_finds_planted_window_labels(kv_dataset):
    """Token labels planted on one head's 3-token window mean: found only if windows align with their labels."""
    window = 3
    means = [window_means(r[:, 2, 3].astype(np.float64), window) for r in kv_dataset.per_token("lookback_context")]
    threshold = np.median(np.concatenate(means))
    data = with_token_labels(kv_dataset, [(m > threshold).astype(int) for m in means])
    _, report = probes.train(data, "lookback", features="window", window=window, test_fraction=0.5)
    assert report["test"]["auroc"] > 0.85, report


def test_windows_never_cross_the_split(kv_dataset):
    test = split(kv_dataset.groups, seed=0, test_fraction=0.5)
    ex_train = examples(kv_dataset, features="window", rows=np.nonzero(~test)[0])
    ex_test = examples(kv_dataset, features="window", rows=np.nonzero(test)[0])
    assert not set(kv_dataset.groups[ex_train.row]) & set(kv_dataset.groups[ex_test.row])
    # the split depends on the group alone, not on which other groups are present
    np.testing.assert_array_equal(split(kv_dataset.groups[:40], seed=0, test_fraction=0.5), test[:40])


@pytest.mark.parametrize("detector,options", [
    ("nonkes", {"epochs": 60, "pretrain_epochs": 10}),
    ("attention-graph", {"epochs": 4}),
])
def test_graph_detectors_random_labels_score_chance(kv_dataset, detector, options):
    scores = []
    for seed in range(2):
        data = with_labels(kv_dataset, random_labels(kv_dataset, 200 + seed))
        _, report = probes.train(data, detector, seed=seed, test_fraction=0.5, **options)
        scores.append(report["test"]["auroc"])
    assert abs(np.mean(scores) - 0.5) < 0.2, scores
