"""Lookback features and the attention graph equal a direct computation from dense maps (trace with maps)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from workbench.probes.features import VARIANTS, token_features
from workbench.probes.graphs import attention_graph
from workbench.probes.lookback import window_means

import workbench


def lookback_from_maps(trace, variant: str) -> np.ndarray:
    """[generated token, layer, head] C / (C + N) from each map row p - 1, with plain means over key sets."""
    start, end = trace.generation["start"], trace.generation["end"]
    regions = [token.region for token in trace.tokens]
    out = np.zeros((end - start, trace.n_layers(), trace.n_heads()))
    for layer in range(trace.n_layers()):
        maps = trace.layer(layer)["maps"].double()  # [head, query_pos, key_pos]
        for t, p in enumerate(range(start, end)):
            row = p - 1
            context = [j for j in range(row + 1) if regions[j] in VARIANTS[variant]]
            generated = [j for j in range(start, row + 1)]
            c = maps[:, row, context].mean(-1)
            n = maps[:, row, generated].mean(-1) if generated else torch.zeros_like(c)
            out[t, layer] = (c / (c + n)).numpy()
    return out


def test_lookback_equals_dense_maps_text(models):
    trace = workbench.trace(models("tiny-llama"), "Anna's code is 4821. Ben's code is 1234. What is Ben's code?",
                            max_new_tokens=7, maps="all", map_dtype="float32")
    features = token_features(trace)
    assert trace.generation["end"] - trace.generation["start"] == 7
    for variant in ("context", "prompt"):
        expected = lookback_from_maps(trace, variant)
        np.testing.assert_allclose(features[f"lookback_{variant}"], expected, rtol=1e-5, atol=1e-6)
    # the first generated token was predicted by the last prompt row, which sees no generated key: ratio 1
    np.testing.assert_allclose(features["lookback_context"][0], 1.0)
    assert "lookback_image" not in features
    rows = np.arange(trace.generation["start"] - 1, trace.generation["end"] - 1)
    entropy = np.stack([trace.layer(layer)["entropy"][:, rows].numpy().T for layer in range(trace.n_layers())], 1)
    np.testing.assert_allclose(features["entropy"], entropy, rtol=1e-6)
    np.testing.assert_allclose(features["logprob"], trace.tensor("outputs.next_token_logprob")[rows].numpy())


def test_lookback_equals_dense_maps_image(models, tmp_path):
    image = tmp_path / "scene.png"
    Image.new("RGB", (32, 32), (200, 30, 30)).save(image)
    trace = workbench.trace(models("tiny-llava"), "Describe the image.", image, max_new_tokens=5, maps="all",
                            map_dtype="float32")
    features = token_features(trace)
    for variant in ("context", "image_prompt", "image"):
        np.testing.assert_allclose(features[f"lookback_{variant}"], lookback_from_maps(trace, variant),
                                   rtol=1e-5, atol=1e-6)
    start, end = trace.generation["start"], trace.generation["end"]
    image_keys = [j for j, token in enumerate(trace.tokens) if token.region == "image"]
    share = np.stack([trace.layer(layer)["maps"].double()[:, start - 1:end - 1][..., image_keys].sum(-1).numpy().T
                      for layer in range(trace.n_layers())], 1)
    np.testing.assert_allclose(features["share_image"], share, rtol=1e-5, atol=1e-6)


def test_attention_graph_edges_from_maps(models):
    """Edge weights = attention averaged over layer x head pairs where the key is in the query's top-k."""
    k = 3
    trace = workbench.trace(models("tiny-llama"), "one two three four five six", max_new_tokens=4, maps="all",
                            map_dtype="float32", top_k=k)
    graph = attention_graph(trace, edges_per_node=1000)
    n, pairs = len(trace.tokens), trace.n_layers() * trace.n_heads()
    expected = np.zeros((n, n))
    for layer in range(trace.n_layers()):
        maps = trace.layer(layer)["maps"].double().numpy()
        for head in range(trace.n_heads()):
            for i in range(n):
                visible = maps[head, i, : i + 1]
                top = np.argsort(-visible, kind="stable")[: min(k, i + 1)]
                for j in top:
                    if j != i:
                        expected[i, j] += visible[j]
    expected /= pairs
    actual = np.zeros((n, n))
    actual[graph["dst"], graph["src"]] = graph["weight"]
    np.testing.assert_allclose(actual, expected, atol=1e-6)
    assert graph["nodes"].shape == (n, 6 + 8 * trace.n_layers())
    generated = graph["nodes"][:, 4]
    assert generated.sum() == trace.generation["end"] - trace.generation["start"]


def test_window_means_match_a_loop():
    values = np.random.RandomState(0).rand(11, 3)
    for window in (1, 3, 8, 20):
        expected = np.stack([values[max(0, j - window + 1): j + 1].mean(0) for j in range(len(values))])
        np.testing.assert_allclose(window_means(values, window), expected)


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_variant_key_sets_exclude_generated(variant):
    assert "generated" not in VARIANTS[variant]
