"""Mask-only counts (key_count, region_count, prompt_key_count) are computed once per forward and stored once
per bundle for the layers that share a mask; a trace holding a copy per layer still writes and reads."""

from __future__ import annotations

import json

import pytest
import torch

import workbench
from workbench.traces.trace import MemoryTensors, Trace

COUNTS = ("key_count", "region_count", "prompt_key_count")


@pytest.fixture(scope="module")
def traced(models):
    return workbench.trace(models("tiny-llama"), "Shared counts, once", max_new_tokens=3)


def _reference_counts(trace) -> dict[str, torch.Tensor]:
    """The counts of a causal trace from their definition: a dense visibility matrix and one-hot regions."""
    n, start = len(trace.tokens), trace.generation["start"]
    visible = torch.tril(torch.ones(n, n, dtype=torch.long))
    one_hot = torch.nn.functional.one_hot(trace.regions, len(trace.dims["regions"]))
    return {"key_count": visible.sum(0), "region_count": visible @ one_hot, "prompt_key_count": visible[:start].sum(0)}


def test_counts_equal_their_definition_and_are_stored_once(traced, tmp_path):
    expected = _reference_counts(traced)
    for layer in range(traced.n_layers()):
        for stat in COUNTS:
            assert torch.equal(traced.tensor(f"layer_{layer:02d}.{stat}"), expected[stat]), (layer, stat)
    path = traced.save(tmp_path / "shared.wbtrace")
    index = json.loads((path / "manifest.json").read_text())["tensors"]
    for stat in COUNTS:
        places = {(index[f"layer_{layer:02d}.{stat}"]["file"], index[f"layer_{layer:02d}.{stat}"]["key"])
                  for layer in range(traced.n_layers())}
        assert places == {("tensors/text.safetensors", f"layer_00.{stat}")}, stat
    from safetensors import safe_open

    with safe_open(str(path / "tensors" / "text.safetensors"), framework="pt") as shard:
        assert not {f"layer_01.{stat}" for stat in COUNTS} & set(shard.keys())  # no per-layer copy
    loaded = workbench.load(path, verify=True)
    for layer in range(traced.n_layers()):
        stats = loaded.layer(layer)
        for stat in COUNTS:
            assert torch.equal(stats[stat], expected[stat]), (layer, stat)
    assert workbench.load(loaded.save(tmp_path / "again.wbtrace"), verify=True).layer(1)["key_count"].equal(
        expected["key_count"])


def test_counts_held_per_layer_are_written_per_layer(traced, tmp_path):
    # a trace whose every layer holds counts of its own (as captures did before shared counts)
    own_copies = {name: (traced.tensor(name).clone(), traced.axes(name)) for name in traced.tensor_names()}
    old = Trace(meta=traced.meta, tokens=traced.tokens, tensors=MemoryTensors(own_copies))
    path = old.save(tmp_path / "old.wbtrace")
    index = json.loads((path / "manifest.json").read_text())["tensors"]
    assert index["layer_01.key_count"] == {**index["layer_01.key_count"], "file": "tensors/text.safetensors",
                                           "key": "layer_01.key_count"}
    loaded = workbench.load(path, verify=True)
    expected = _reference_counts(traced)
    for layer in range(traced.n_layers()):
        for stat in COUNTS:
            assert torch.equal(loaded.layer(layer)[stat], expected[stat]), (layer, stat)
    from workbench.traces.health import health

    assert health(loaded).healthy


def test_layers_with_different_masks_keep_their_own_counts(tmp_path):
    # Gemma 3 mixes sliding-window and full-attention layers: each kind shares one count tensor, the kinds do not
    from workbench.models.tiny import tiny_gemma3

    loaded = tiny_gemma3()
    config = loaded.text_config
    trace = workbench.trace(loaded, "Sliding windows forget the distant past, one token at a time.", max_new_tokens=3)
    n = len(trace.tokens)
    i, j = torch.arange(n)[:, None], torch.arange(n)[None, :]
    kinds = {}
    for layer, kind in enumerate(config.layer_types):
        visible = (j <= i) & ((i - j < config.sliding_window) if kind == "sliding_attention" else True)
        assert torch.equal(trace.tensor(f"layer_{layer:02d}.key_count"), visible.long().sum(0)), layer
        kinds.setdefault(kind, []).append(layer)
    assert set(kinds) == {"sliding_attention", "full_attention"}
    index = json.loads((trace.save(tmp_path / "g.wbtrace") / "manifest.json").read_text())["tensors"]
    for layers in kinds.values():
        assert len({index[f"layer_{layer:02d}.key_count"]["key"] for layer in layers}) == 1
    assert index[f"layer_{kinds['sliding_attention'][0]:02d}.key_count"]["key"] != \
        index[f"layer_{kinds['full_attention'][0]:02d}.key_count"]["key"]
