"""`gemma3-270m` (real Gemma 3 270M weights from the packaged GGUF) captured against HF eager attention around
its 512-token sliding window: one prompt forward whose rows lie below, at and past the window, and greedy decode
steps that cross it, checked both against eager maps of the final sequence and step by step through HF's own
sliding KV cache.

Gemma 3's residual stream grows to ~1e5, so two whole forwards that differ only in the attention kernel (eager vs
SDPA, in fp32) drift apart: measured 0.23 absolute (5e-6 relative) at layer 6's input, enough to move key mass
by up to 1e-3 in later layers whatever the capture does. The reference therefore runs each eager layer on the
very input the captured layer received (recorded by a pre-hook, fed back into the eager run): what is compared
is the attention each layer computes, to 1e-5.
"""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path

import pytest
import torch

import workbench
from tests.helpers import assert_close, eager_forward, statistics_from_maps

pytestmark = pytest.mark.slow

WINDOW = 512
SOURCE = Path(__file__).resolve().parents[3] / "docs" / "long-context.md"  # real English prose, > 2,000 tokens


def _prompt_of_tokens(tokenizer, n: int) -> str:
    """Prose cut so that the tokenizer (its BOS included) gives n tokens, give or take a merge at the cut."""
    ids = tokenizer(SOURCE.read_text(encoding="utf-8"), add_special_tokens=False)["input_ids"]
    return tokenizer.decode(ids[: n - 1])


def _visibility(config, layer: int, n: int) -> torch.Tensor:
    """[query_pos, key_pos] from the config's definition, not transformers' mask code: causal, and on sliding
    layers query i sees key j only if i - j < sliding_window."""
    i, j = torch.arange(n)[:, None], torch.arange(n)[None, :]
    visible = j <= i
    if config.layer_types[layer] == "sliding_attention":
        visible &= (i - j) < config.sliding_window
    return visible


@contextmanager
def _layer_inputs(model, feed: dict[int, list[torch.Tensor]] | None = None):
    """Record every decoder layer's input hidden states, one tensor per call (feed None), or replace them, call by
    call, with `feed`'s tensors. Yields the recording {layer: [hidden, ...]}."""
    recorded: dict[int, list[torch.Tensor]] = {i: [] for i in range(len(model.model.layers))}

    def pre_hook(index):
        def hook(module, args, kwargs):
            hidden = kwargs["hidden_states"] if "hidden_states" in kwargs else args[0]
            if feed is None:
                recorded[index].append(hidden.detach().clone())
                return None
            replacement = feed[index].pop(0)
            assert replacement.shape == hidden.shape, (index, replacement.shape, hidden.shape)
            if "hidden_states" in kwargs:
                return args, {**kwargs, "hidden_states": replacement}
            return (replacement, *args[1:]), kwargs
        return hook

    handles = [layer.register_forward_pre_hook(pre_hook(i), with_kwargs=True)
               for i, layer in enumerate(model.model.layers)]
    try:
        yield recorded
    finally:
        for handle in handles:
            handle.remove()


def _trace_recording_inputs(loaded, prompt: str, new_tokens: int):
    with _layer_inputs(loaded.model) as inputs:
        trace = workbench.trace(loaded, prompt, raw=True, max_new_tokens=new_tokens)
    return trace, inputs


def _check_against_eager(loaded, trace, inputs):
    """Statistics of every layer against eager maps of the final sequence, each eager layer fed the captured
    layer's input (the prompt forward's and each decode step's, concatenated along the sequence)."""
    ids = torch.tensor([[t.id for t in trace.tokens]])
    feed = {layer: [torch.cat(calls, dim=1)] for layer, calls in inputs.items()}
    with _layer_inputs(loaded.model, feed):
        reference = eager_forward(loaded.model, input_ids=ids, logits_to_keep=1)
    config, n = loaded.model.config, ids.shape[1]
    assert len(reference.attentions) == trace.n_layers() == 18
    for layer, eager_maps in enumerate(reference.attentions):
        visible = _visibility(config, layer, n)
        if config.layer_types[layer] == "sliding_attention":  # the window really hides keys in this input
            assert not visible[n - 1, : n - WINDOW].any() and eager_maps[0, :, n - 1, : n - WINDOW].abs().max() == 0
        stats = trace.layer(layer)
        for stat, value in statistics_from_maps(eager_maps[0], trace.regions, causal=True, visible=visible).items():
            assert_close(stats[stat], value, what=f"layer {layer} ({config.layer_types[layer]}) {stat}")
    assert trace.meta["checks"]["healthy"], trace.meta["checks"]


def test_the_packaged_model_is_gemma3_270m(models):
    loaded = models("gemma3-270m")
    config = loaded.model.config
    assert type(loaded.model).__name__ == "Gemma3ForCausalLM"
    assert config.layer_types == (["sliding_attention"] * 5 + ["full_attention"]) * 3
    assert (config.sliding_window, config.num_attention_heads, config.num_key_value_heads, config.head_dim) == \
        (WINDOW, 4, 1, 256)
    assert not loaded.has_chat_template  # none ships with the GGUF: prompts go in raw
    assert not hasattr(config, "quantization_config")  # plain fp32 weights, not dequantised on every load


def test_prompt_rows_below_at_and_past_the_window_equal_eager(models):
    loaded = models("gemma3-270m")
    trace, inputs = _trace_recording_inputs(loaded, _prompt_of_tokens(loaded.tokenizer, 600), 0)
    assert 590 <= len(trace.tokens) <= 610  # rows 0..510 see every earlier key, 511 exactly a window, later less
    _check_against_eager(loaded, trace, inputs)


def test_decode_steps_across_the_window_equal_eager(models):
    """Greedy steps from a 508-token prompt to 514 tokens: the sliding cache goes from holding every key to
    dropping the oldest. Checked against one eager forward over the final sequence and against HF's eager
    decode through its own sliding cache (it keeps the keys the window leaves visible)."""
    loaded = models("gemma3-270m")
    model, new_tokens = loaded.model, 6
    trace, inputs = _trace_recording_inputs(loaded, _prompt_of_tokens(loaded.tokenizer, 508), new_tokens)
    start, n = trace.generation["start"], len(trace.tokens)
    assert start < WINDOW < n and n == start + new_tokens
    assert all(len(calls) == 1 + new_tokens for calls in inputs.values())  # the prompt, then one call per step
    _check_against_eager(loaded, trace, inputs)
    ids = [t.id for t in trace.tokens]
    previous = model.config._attn_implementation
    model.set_attn_implementation("eager")
    feed = {layer: list(calls) for layer, calls in inputs.items()}  # call by call, as the capture ran
    try:
        with torch.no_grad(), _layer_inputs(model, feed):
            output = model(input_ids=torch.tensor([ids[:start]]), use_cache=True, logits_to_keep=1)
            for position in range(start, n):
                output = model(input_ids=torch.tensor([[ids[position]]]), cache=output.cache, use_cache=True,
                               output_attentions=True)
                for layer, row in enumerate(output.attentions):
                    kept = row.shape[-1]
                    sliding = model.config.layer_types[layer] == "sliding_attention"
                    assert kept == (min(position + 1, WINDOW) if sliding else position + 1)
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
