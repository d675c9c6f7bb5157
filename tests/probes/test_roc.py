"""ROC curves: the same rows and AUROC as Probe.evaluate, and an area that matches the AUROC."""

from __future__ import annotations

import numpy as np
import pytest
from workbench.probes.roc import curve_of

from workbench import probes
from workbench.errors import InputError


@pytest.mark.parametrize("detector, options", [("lookback", {"features": "span"}),
                                               ("nonkes", {"embedding": "hidden", "epochs": 30})])
def test_roc_curve_matches_evaluate(kv_dataset, detector, options):
    probe, _ = probes.train(kv_dataset, detector, **options)
    curve = probes.roc_curve(probe, kv_dataset)
    assert curve["rows"] == "held-out split"
    assert curve["auroc"] == pytest.approx(probe.evaluate(kv_dataset)["auroc"], abs=1e-12)
    assert np.all(np.diff(curve["fpr"]) >= 0) and np.all(np.diff(curve["tpr"]) >= 0)
    assert np.trapezoid(curve["tpr"], curve["fpr"]) == pytest.approx(curve["auroc"], abs=1e-9)


def test_curve_of_by_hand_and_single_class():
    # pairs (pos, neg): (0.35 > 0.1), (0.35 < 0.4), (0.8 > both): 3 of 4 ordered right
    assert curve_of(np.array([0, 0, 1, 1]), np.array([0.1, 0.4, 0.35, 0.8]))["auroc"] == 0.75
    with pytest.raises(InputError, match="both"):
        curve_of(np.array([1, 1]), np.array([0.2, 0.3]))
