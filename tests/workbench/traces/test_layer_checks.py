"""layer_checks (one pass over a layer's statistics) against the checks written out one by one on planted faults."""

import math

import torch

from workbench.traces.health import layer_checks


def _stats(heads=3, rows=6, keys=6, regions=2):
    return {"key_mass": torch.ones(heads, keys), "region_mass": torch.full((heads, rows, regions), 0.5),
            "entropy": torch.ones(heads, rows), "normaliser": torch.ones(heads, rows),
            "region_count": torch.ones(rows, regions, dtype=torch.long)}


def test_clean_layer():
    assert layer_checks(_stats()) == (0, 0.0, 0)


def test_planted_faults_are_counted_once_each():
    stats = _stats()
    stats["normaliser"][:, 1] = 0  # row 1: Z = 0 in every head (never recorded)
    stats["normaliser"][0, 2] = 0  # row 2: one head only, recorded
    stats["normaliser"][1, 4] = 1.25
    stats["region_count"][5] = 0  # row 5: no visible key
    stats["entropy"][2, 3] = float("inf")
    stats["key_mass"][0, 0] = float("nan")
    non_finite, error, rows = layer_checks(stats)
    assert non_finite == 2 and rows == 2
    assert error == float((stats["normaliser"] - 1).abs().max())  # 1.0 from the zeros, above the 0.25


def test_nan_normaliser_is_infinitely_wrong_and_zero_rows_still_found():
    stats = _stats()
    stats["normaliser"][2, 0] = float("nan")
    stats["normaliser"][:, 3] = 0
    non_finite, error, rows = layer_checks(stats)
    assert non_finite == 1 and math.isinf(error) and rows == 1


def test_error_equals_the_elementwise_maximum_in_float32():
    generator = torch.Generator().manual_seed(0)
    stats = _stats(rows=50)
    stats["normaliser"] = 1 + torch.randn(3, 50, generator=generator) * 3  # values far outside [0.5, 2]
    stats["normaliser"][stats["normaliser"] == 0] = 1
    expected = (stats["normaliser"] - 1).abs().max().item()
    assert layer_checks(stats)[1] == expected


def test_opposite_infinities_are_both_counted():
    stats = _stats()
    stats["region_mass"][0, 0, 0] = float("inf")
    stats["region_mass"][1, 2, 1] = float("-inf")  # the two cancel to NaN in a sum: still two values
    assert layer_checks(stats)[0] == 2


def test_clean_layers_certifies_only_what_every_layer_passes():
    """clean_layers (the layers of a stack stacked) against layer_checks of each layer: the same max |Z - 1| where
    every layer is healthy, None (check one by one) where any one fails a check or the shapes differ."""
    from workbench.traces.health import Z_TOLERANCE, clean_layers

    generator = torch.Generator().manual_seed(3)
    layers = [_stats() for _ in range(4)]
    for stats in layers:
        stats["normaliser"] += (torch.rand(stats["normaliser"].shape, generator=generator) - 0.5) * 1e-4
    expected = max(layer_checks(stats)[1] for stats in layers)
    assert all(layer_checks(stats)[0] == layer_checks(stats)[2] == 0 for stats in layers)
    assert clean_layers(layers) == expected > 0
    faults = {"nan": ("key_mass", (0, 1), float("nan")), "inf": ("entropy", (1, 2), float("inf")),
              "zero Z in one head": ("normaliser", (0, 3), 0.0), "no visible key": ("region_count", (4,), 0),
              "Z off": ("normaliser", (2, 5), 1 + 2 * Z_TOLERANCE)}
    for name, (stat, index, value) in faults.items():
        planted = [{key: tensor.clone() for key, tensor in stats.items()} for stats in layers]
        planted[2][stat][index] = value
        one_by_one = [layer_checks(stats) for stats in planted]
        assert any(count or rows or error >= Z_TOLERANCE for count, error, rows in one_by_one), name
        assert clean_layers(planted) is None, name
    shorter = [*layers[:3], _stats(rows=5)]
    assert clean_layers(shorter) is None
