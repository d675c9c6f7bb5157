"""Sliding-window (Gemma 3, Qwen2) and chunked-local (Llama 4) layers captured against HF eager attention:
prompts below, at and past the window, the prompt forward and greedy decode steps through the sliding KV cache,
with every statistics kernel.

A sliding layer's KV cache keeps only the last window of keys, so a decode step's keys do not start at position
0. Placing the step by its key count wrote it over the last row inside the window and left its own row empty;
these tests compare every row and every column with eager maps of the full sequence.
"""

from __future__ import annotations

import pytest
import torch
from tests.helpers import assert_close, eager_forward, statistics_from_maps

import workbench
from workbench.models.tiny import TINY_SLIDING_WINDOW, tiny_gemma3, tiny_llama4_chunked, tiny_qwen2_window
from workbench.traces.health import health

WINDOW = TINY_SLIDING_WINDOW
NEW_TOKENS = 4
TEXT = "Sliding windows forget the distant past, one token at a time."
# Prompt characters; the byte-level tokenizer adds BOS, so the prompt is one token longer: 5 (below the window,
# which the decode steps then cross), 8 (exactly the window) and 25 (three windows).
PROMPT_CHARS = {"below": WINDOW - 4, "at": WINDOW - 1, "past": 3 * WINDOW}
BUILDERS = {"tiny-gemma3": tiny_gemma3, "tiny-qwen2-window": tiny_qwen2_window,
            "tiny-llama4-chunked": tiny_llama4_chunked}


@pytest.fixture(scope="module")
def family():
    cache = {}

    def get(name: str):
        if name not in cache:
            cache[name] = BUILDERS[name]()
        return cache[name]

    return get


def _visibility(config, layer: int, n: int) -> torch.Tensor:
    """[query_pos, key_pos] bool from the configs' definitions, independent of transformers' mask code: causal;
    on sliding layers query i sees key j iff also i - j < sliding_window; on chunked layers iff also both lie in
    the same chunk of attention_chunk_size positions."""
    i, j = torch.arange(n)[:, None], torch.arange(n)[None, :]
    visible = j <= i
    if config.layer_types[layer] == "sliding_attention":
        visible &= (i - j) < config.sliding_window
    elif config.layer_types[layer] == "chunked_attention":
        visible &= (i // config.attention_chunk_size) == (j // config.attention_chunk_size)
    return visible


def _eager(loaded, trace):
    ids = torch.tensor([[t.id for t in trace.tokens]])
    return eager_forward(loaded.model, input_ids=ids).attentions


def test_fixtures_have_sliding_and_full_layers(family):
    gemma = family("tiny-gemma3").model.config
    assert gemma.layer_types == ["sliding_attention"] * 5 + ["full_attention"]
    assert (gemma.num_attention_heads, gemma.num_key_value_heads, gemma.sliding_window) == (4, 1, WINDOW)
    qwen = family("tiny-qwen2-window").model.config
    assert qwen.layer_types == ["full_attention", "sliding_attention", "sliding_attention"]
    llama4 = family("tiny-llama4-chunked").model.config
    assert llama4.layer_types == ["chunked_attention"] * 3 + ["full_attention"]


@pytest.mark.parametrize("kernel", ["auto", "torch", "dense"])
@pytest.mark.parametrize("where", list(PROMPT_CHARS))
@pytest.mark.parametrize("name", list(BUILDERS))
def test_statistics_equal_eager(family, name, where, kernel):
    from workbench.kernels import fused_cpu

    loaded = family(name)
    trace = workbench.trace(loaded, TEXT[:PROMPT_CHARS[where]], raw=True, max_new_tokens=NEW_TOKENS, kernel=kernel)
    start, n = trace.generation["start"], len(trace.tokens)
    assert start == PROMPT_CHARS[where] + 1 and n == start + NEW_TOKENS
    config = loaded.model.config
    for layer, eager_maps in enumerate(_eager(loaded, trace)):
        visible = _visibility(config, layer, n)
        expected = statistics_from_maps(eager_maps[0], trace.regions, causal=True, visible=visible)
        stats = trace.layer(layer)
        for stat, value in expected.items():
            assert_close(stats[stat], value, what=f"{name} {where} {kernel} layer {layer} {stat}")
        # the prompt rows' own column sums (Gu et al.'s alpha is measured on the prompt forward)
        assert_close(stats["prompt_key_mass"], eager_maps[0, :, :start].sum(1), what=f"layer {layer} prompt mass")
        assert_close(stats["prompt_key_count"], visible[:start].sum(0), what=f"layer {layer} prompt count")
    checks = trace.meta["checks"]  # the capture's verdict, and the one recomputed from the stored statistics
    assert checks["healthy"] and checks["unrecorded_rows"] == 0, checks
    assert health(trace).healthy
    ran = trace.meta["capture"]["kernels_run"]["text"]
    calls = (NEW_TOKENS + 1) * config.num_hidden_layers  # the prompt and one step per generated token
    expected_kernel = kernel if kernel != "auto" else ("one-pass" if fused_cpu.load() else "torch")
    assert ran == {expected_kernel: calls}  # auto: windowed masks too go one-pass, no layer falls back
    if expected_kernel == "one-pass" or kernel != "auto":
        assert trace.meta["capture"]["kernel_fallbacks"] == {}


def test_maps_and_top_keys_sit_at_absolute_key_positions(family):
    loaded = family("tiny-gemma3")
    trace = workbench.trace(loaded, TEXT[:PROMPT_CHARS["past"]], raw=True, max_new_tokens=NEW_TOKENS, maps="all",
                            map_dtype="float32", top_k=3)
    for layer, eager_maps in enumerate(_eager(loaded, trace)):
        stats = trace.layer(layer)
        assert_close(stats["maps"], eager_maps[0], what=f"layer {layer} maps")
        weights_at_top = eager_maps[0].gather(-1, stats["top_index"])
        assert_close(stats["top_weight"], weights_at_top, what=f"layer {layer} top keys")
        assert_close(stats["top_weight"], eager_maps[0].topk(3, dim=-1).values, what=f"layer {layer} top weights")
    fallbacks = trace.meta["capture"]["kernel_fallbacks"]["text"]
    assert fallbacks == {"full maps requested for this layer": (NEW_TOKENS + 1) * 6}


def test_decode_rows_equal_eager_through_the_sliding_cache(family):
    """The decode rows against HF eager run step by step with its own sliding KV cache (keys it no longer holds
    are the ones the window hides), not only against one forward over the final sequence."""
    loaded = family("tiny-gemma3")
    model = loaded.model
    trace = workbench.trace(loaded, TEXT[:PROMPT_CHARS["past"]], raw=True, max_new_tokens=NEW_TOKENS)
    ids = [t.id for t in trace.tokens]
    start = trace.generation["start"]
    previous = model.config._attn_implementation
    model.set_attn_implementation("eager")
    try:
        with torch.no_grad():
            output = model(input_ids=torch.tensor([ids[:start]]), use_cache=True)
            for position in range(start, len(ids)):
                output = model(input_ids=torch.tensor([[ids[position]]]), cache=output.cache, use_cache=True,
                               output_attentions=True)
                for layer, row in enumerate(output.attentions):
                    kept = row.shape[-1]  # the window on sliding layers, every key on the full one
                    if model.config.layer_types[layer] == "sliding_attention":
                        assert kept == WINDOW
                    probs = row[0, :, 0].double()
                    plogp = torch.where(probs > 0, probs * probs.clamp_min(1e-300).log(), torch.zeros_like(probs))
                    stats = trace.layer(layer)
                    assert_close(stats["entropy"][:, position], -plogp.sum(-1), what=f"layer {layer} row {position}")
                    regions = trace.regions[position + 1 - kept:position + 1]
                    by_region = torch.zeros(probs.shape[0], stats["region_mass"].shape[-1], dtype=torch.float64)
                    by_region.index_add_(1, regions, probs)
                    assert_close(stats["region_mass"][:, position], by_region, what=f"layer {layer} row {position}")
    finally:
        model.set_attn_implementation(previous)


def test_info_names_the_calls_that_took_two_passes(family, tmp_path):
    from tests.workbench.cli.cli_inprocess import run_cli

    bundle = tmp_path / "gemma.wbtrace"
    code, _, err = run_cli("trace", "--model", "tiny-gemma3", "--prompt", TEXT, "--raw", "--maps", "0",
                           "--max-new-tokens", "2", "--out", bundle)
    assert code == 0, err
    code, out, err = run_cli("info", bundle)
    assert code == 0, err
    assert "two-pass   where the one-pass kernel did not apply: text 3 calls: full maps requested" in out, out
    assert "healthy" in out
