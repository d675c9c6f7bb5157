"""Sweep features against an independent computation from HF eager attention maps."""

from __future__ import annotations

import math

import pytest
import torch

import workbench
from tests.helpers import eager_forward
from workbench.scale.features import head_rows, input_row
from workbench.scale.inputs import SweepInput
from workbench.traces.tokens import REGIONS


def _reference_rows(maps: torch.Tensor, regions: torch.Tensor, gen_start: int) -> list[dict]:
    """Features of every head from dense maps [head, query, key], written with plain loops over definitions."""
    maps = maps.double()
    n_heads, n, _ = maps.shape
    rows = []
    for head in range(n_heads):
        a = maps[head]
        alpha = [float(a[k:, k].sum()) / (n - k) for k in range(n)]  # causal: n - k queries see key k
        entropy = [float(-(a[i, : i + 1] * a[i, : i + 1].clamp_min(1e-300).log()).sum()) for i in range(n)]
        shares = {region: sum(float(a[i, regions == r].sum()) for i in range(n)) / n for r, region in enumerate(REGIONS)}
        ratios = []
        for row in range(gen_start - 1, n - 1):
            visible = torch.arange(row + 1)
            generated = visible[regions[: row + 1] == REGIONS.index("generated")]
            context = visible[regions[: row + 1] != REGIONS.index("generated")]
            c = float(a[row, context].mean())
            g = float(a[row, generated].mean()) if len(generated) else 0.0
            ratios.append(c / (c + g))
        hidden = max(range(1, n), key=lambda k: alpha[k])
        rows.append({"sink_score": alpha[0], "sink": alpha[0] > 0.3, "hidden_alpha": alpha[hidden],
                     "hidden_alpha_key": hidden, "entropy_mean": sum(entropy) / n,
                     **{f"share_{region}": value for region, value in shares.items()},
                     "lookback_ratio": sum(ratios) / len(ratios) if ratios else None,
                     "top_key": int(a.sum(0).argmax())})
    return rows


@pytest.mark.parametrize("name,new_tokens", [("tiny-llama", 3), ("tiny-gpt2", 0)])
def test_head_features_equal_definitions_on_eager_maps(models, name, new_tokens):
    loaded = models(name)
    trace = workbench.trace(loaded, "The red square is next to the blue", max_new_tokens=new_tokens)
    ids = torch.tensor([[t.id for t in trace.tokens]])
    reference = eager_forward(loaded.model, input_ids=ids).attentions
    rows = head_rows(trace)
    assert len(rows) == trace.n_layers() * trace.n_heads()
    gen_start = trace.generation["start"]
    for layer, maps in enumerate(reference):
        expected = _reference_rows(maps[0], trace.regions, gen_start)
        for head, want in enumerate(expected):
            got = next(r for r in rows if r["layer"] == layer and r["head"] == head and r["stack"] == "text")
            for key, value in want.items():
                if value is None or isinstance(value, (bool, int)):
                    assert got[key] == value, (layer, head, key)
                else:
                    assert math.isclose(got[key], value, rel_tol=1e-5, abs_tol=1e-5), (layer, head, key, got[key], value)
            assert got["normaliser_error"] < 1e-5
            if new_tokens == 0:
                assert got["lookback_ratio"] is None and got["gen_share_image"] is None


def test_input_row_counts_regions(models):
    trace = workbench.trace(models("tiny-llama"), "Hello there", max_new_tokens=2)
    row = input_row(SweepInput(7, "x", "Hello there"), trace, seconds=0.5, bundle=None)
    assert row["index"] == 7 and row["n_tokens"] == len(trace.tokens) == row["n_prompt_tokens"] + row["n_generated"]
    assert sum(row[f"tokens_{r}"] for r in REGIONS) == len(trace.tokens)
    assert row["tokens_prompt"] == sum(t.region == "prompt" for t in trace.tokens) > 0
    assert row["healthy"] and row["error"] is None
