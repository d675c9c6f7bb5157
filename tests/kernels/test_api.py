"""The public entry point: implementation choice, input validation, lazy triton import, mask-only counts."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys

import pytest
import torch

from workbench.kernels import IMPLEMENTATIONS, MaskSpec, attention_statistics
from workbench.kernels import api
from workbench.kernels.counts import visibility_counts


def _inputs(n=12, heads=4, kv_heads=2):
    torch.manual_seed(0)
    return torch.randn(1, heads, n, 8), torch.randn(1, kv_heads, n, 8)


def _kw(n=12, **over):
    kw = dict(
        scaling=0.3, mask=MaskSpec(causal=True), key_regions=torch.zeros(n, dtype=torch.long), n_regions=1
    )
    kw.update(over)
    return kw


def test_auto_is_torch_on_cpu_and_dense_stays_explicit():
    query, _ = _inputs()
    assert api.resolve_implementation("auto", query) == "torch"
    assert api.resolve_implementation("dense", query) == "dense"
    assert {"dense", "torch"} <= set(IMPLEMENTATIONS)


def test_triton_listed_only_where_importable(monkeypatch):
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a, **k: None)
    assert not api._triton_importable()


def test_importing_the_package_does_not_import_triton():
    code = "import sys, workbench.kernels; assert 'triton' not in sys.modules, 'triton imported eagerly'"
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    subprocess.run([sys.executable, "-c", code], check=True, env=env, timeout=120)


def test_triton_on_cpu_without_interpreter_is_refused(monkeypatch):
    if "triton" not in IMPLEMENTATIONS:
        pytest.skip("triton not installed")
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    query, key = _inputs()
    with pytest.raises(ValueError, match="CUDA"):
        attention_statistics(query, key, implementation="triton", **_kw())


@pytest.mark.parametrize(
    "change, message",
    [
        (dict(key_regions=torch.zeros(11, dtype=torch.long)), "key_regions must be"),
        (dict(key_regions=torch.full((12,), 3)), r"lie in \[0, 1\)"),
        (dict(top_k=-1), "top_k"),
        (dict(map_heads=[4]), "map_heads"),
        (dict(log_normaliser=torch.zeros(1, 4, 11)), "log_normaliser"),
        (dict(softcap=0.0), "softcap"),
        (dict(implementation="flash"), "unknown or unavailable implementation"),
        (dict(mask=MaskSpec(key_padding=torch.ones(2, 12, dtype=torch.bool))), "key_padding"),
        (dict(mask=MaskSpec(dense=torch.ones(1, 2, 12, 12, dtype=torch.bool))), "dense"),
        (dict(mask=MaskSpec(sliding_window=0)), "sliding_window"),
    ],
)
def test_bad_inputs_are_refused(change, message):
    query, key = _inputs()
    implementation = change.pop("implementation", "torch")
    with pytest.raises(ValueError, match=message):
        attention_statistics(query, key, implementation=implementation, **_kw(**change))


def test_heads_must_share_kv_heads():
    query, key = _inputs(heads=5, kv_heads=2)
    with pytest.raises(ValueError, match="cannot share"):
        attention_statistics(query, key, implementation="torch", **_kw())


@pytest.mark.parametrize(
    "mask",
    [
        MaskSpec(causal=True, query_offset=5, sliding_window=4),
        MaskSpec(causal=False, sliding_window=3),
        MaskSpec(
            causal=True,
            key_padding=torch.tensor([[0, 0, 1, 1, 1, 1, 1, 1, 1, 1, 1, 0], [1] * 12], dtype=torch.bool),
        ),
    ],
)
def test_counts_match_the_mask(mask):
    n_queries, n_keys, regions = 7, 12, torch.tensor([0, 0, 1, 2, 2, 2, 1, 0, 0, 2, 1, 1])
    key_count, region_count = visibility_counts(
        mask, batch=2, n_queries=n_queries, n_keys=n_keys, key_regions=regions, n_regions=3, device="cpu"
    )
    visible = mask.block(0, n_queries, 0, n_keys).expand(2, 1, n_queries, n_keys)[:, 0]
    assert torch.equal(key_count, visible.sum(1))
    assert torch.equal(
        region_count, (visible.long()[..., None] * torch.nn.functional.one_hot(regions, 3)).sum(2)
    )
