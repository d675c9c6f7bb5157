"""The Lookback ratio in the released code's convention (voidism/Lookback-Lens, step01_extract_attns.py), against
that definition applied to HF eager's dense maps: the input splits by position at the response header, C is
the mean attention on the keys before it, N the mean on the keys from it on (header + generated so far), and
a row with no key from the header on has an undefined ratio (an empty mean, NaN)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from workbench.probes.features import response_header, token_features
from workbench.probes.lookback import window_means

import workbench
from workbench.errors import InputError

PROMPT = "Anna's code is 4821. Ben's code is 1234. What is Ben's code?"


def eager_maps(loaded, trace) -> list[torch.Tensor]:
    """HF eager attention [head, query_pos, key_pos] per layer on the trace's tokens (generated ones included)."""
    model = loaded.model
    ids = torch.tensor([[token.id for token in trace.tokens]])
    previous = model.config._attn_implementation
    model.set_attn_implementation("eager")
    try:
        with torch.no_grad():
            return [a[0].double() for a in model(input_ids=ids, output_attentions=True).attentions]
    finally:
        model.set_attn_implementation(previous)


def reference_ratios(maps, start: int, end: int, header: int) -> np.ndarray:
    """[generated token, layer, head] as the reference computes them: context_length = input - header; the
    ratio of generated token p is read from row p - 1 (the last query row of its generation step)."""
    context_length = start - header
    out = np.zeros((end - start, len(maps), maps[0].shape[0]))
    for layer, attention in enumerate(maps):
        for t, p in enumerate(range(start, end)):
            row = attention[:, p - 1, :p]
            c = row[:, :context_length].mean(-1)
            n = row[:, context_length:].mean(-1)  # empty slice -> NaN, as torch and the reference give
            out[t, layer] = (c / (c + n)).numpy()
    return out


@pytest.fixture(scope="module")
def llama(models):
    return models("tiny-llama")


@pytest.mark.parametrize("name", ["tiny-llama", pytest.param("smollm2", marks=pytest.mark.slow)])
def test_header_counted_as_new_tokens_with_decomposition_and_with_maps(models, name):
    """Chat templates end the input with their turn end and assistant header (special tokens)."""
    llama = models(name)
    for capture in ({"decomposition": True}, {"maps": "all", "map_dtype": "float32"}):
        trace = workbench.trace(llama, PROMPT, max_new_tokens=6, **capture)
        start, end = trace.generation["start"], trace.generation["end"]
        header = response_header(trace)
        assert header and header[-1] == start - 1 and all(trace.tokens[p].region == "special" for p in header)
        expected = reference_ratios(eager_maps(llama, trace), start, end, len(header))
        features = token_features(trace, variants=["reference", "context"])
        assert not np.isnan(expected).any()  # the header makes the first ratio defined
        np.testing.assert_allclose(features["lookback_reference"], expected, rtol=1e-4, atol=1e-5)
        spans = np.abs(features["lookback_reference"].mean(0) - features["lookback_context"].mean(0)).max()
        print(f"lookback reference convention, {name} ({next(iter(capture))}, header {len(header)} tokens): max |ours - released definition on eager "
              f"maps| {np.abs(features['lookback_reference'] - expected).max():.1e}; answer-span features differ "
              f"from the workbench convention by up to {spans:.2f}")
        # the workbench convention counts the header as context: its first ratio is exactly 1, the reference's not
        np.testing.assert_allclose(features["lookback_context"][0], 1.0)
        assert np.abs(features["lookback_reference"] - features["lookback_context"]).max() > 0.05
        explicit = token_features(trace, variants=["reference"], header_tokens=2)["lookback_reference"]
        np.testing.assert_allclose(explicit, reference_ratios(eager_maps(llama, trace), start, end, 2),
                                   rtol=1e-4, atol=1e-5)


def test_without_header_the_first_ratio_is_undefined_from_statistics_alone(llama):
    trace = workbench.trace(llama, PROMPT, max_new_tokens=6, raw=True)  # no maps, no decomposition
    start, end = trace.generation["start"], trace.generation["end"]
    assert response_header(trace) == []
    expected = reference_ratios(eager_maps(llama, trace), start, end, 0)
    features = token_features(trace, variants=["reference", "context"])
    ratios = features["lookback_reference"]
    assert np.isnan(ratios[0]).all() and np.isnan(expected[0]).all()
    np.testing.assert_allclose(ratios[1:], expected[1:], rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(ratios[1:], features["lookback_context"][1:], rtol=1e-6)  # same after the first


def test_a_header_without_per_key_attention_is_refused(llama):
    trace = workbench.trace(llama, PROMPT, max_new_tokens=3)  # chat template, statistics only
    with pytest.raises(InputError, match="--maps all or --decomposition"):
        token_features(trace, variants=["reference"])
    with pytest.raises(InputError, match="--header-tokens"):
        token_features(workbench.trace(llama, PROMPT, max_new_tokens=2, raw=True), variants=["reference"],
                       header_tokens=10_000)


def test_window_and_span_means_leave_undefined_ratios_out():
    values = np.random.RandomState(0).rand(9, 3)
    values[0] = np.nan  # the reference convention's first ratio without a header
    for window in (1, 3, 8, 20):
        expected = []
        for j in range(len(values)):
            chunk = values[max(0, j - window + 1): j + 1]
            chunk = chunk[~np.isnan(chunk).any(1)]
            expected.append(chunk.mean(0) if len(chunk) else np.full(3, np.nan))
        np.testing.assert_allclose(window_means(values, window), np.stack(expected))


def test_dataset_with_reference_lookback_holds_the_variant_and_gives_examples(models, tmp_path):
    """`probe build --reference-lookback` captures what the chat-template header needs; the column then equals
    the released definition on eager maps of the same tokens, and span / window examples are all finite."""
    from tests.probes.conftest import short_kv_items
    from workbench.probes import dataset
    from workbench.probes.lookback import examples

    llama = models("tiny-llama")
    items = short_kv_items(6, seed=3)
    plain = dataset.build(llama, items, tmp_path / "plain.parquet", max_new_tokens=4, embed=False)
    assert "reference" not in plain["variants"]  # statistics alone cannot split the header from the context
    meta = dataset.build(llama, items, tmp_path / "reference.parquet", max_new_tokens=4, embed=False,
                         reference_lookback=True)
    assert "reference" in meta["variants"]
    data = dataset.load(tmp_path / "reference.parquet")
    ratios = data.per_token("lookback_reference")
    trace = workbench.trace(llama, items[0].prompt, max_new_tokens=4)
    start, end = trace.generation["start"], trace.generation["end"]
    expected = reference_ratios(eager_maps(llama, trace), start, end, len(response_header(trace)))
    np.testing.assert_allclose(ratios[0], expected, rtol=1e-4, atol=1e-5)
    for features in ("span", "window"):
        found = examples(data, features=features, variant="reference", window=2)
        assert len(found.y) and np.isfinite(found.X).all()
