"""Traced generation in statistics mode (the one-pass kernel's decode path for every KV-cache step) against HF
eager attention over the final sequence: every layer's statistics within 1e-5 and the same greedy tokens."""

from __future__ import annotations

import pytest
import torch
from workbench.kernels import fused_cpu

import workbench
from tests.helpers import assert_close, eager_forward, statistics_from_maps

pytestmark = pytest.mark.skipif(not fused_cpu.load(), reason="the fused CPU kernel could not be built here")

NEW_TOKENS = 6


def _check_against_eager(loaded, prompt: str, new_tokens: int):
    trace = workbench.trace(loaded, prompt, max_new_tokens=new_tokens)
    start = trace.generation["start"]
    n_layers = trace.n_layers()
    # every decode step of every layer ran the one-pass kernel (no two-pass fallback)
    assert trace.meta["capture"]["kernels_run"]["text"] == {"one-pass": n_layers * (1 + new_tokens)}
    ids = torch.tensor([[t.id for t in trace.tokens]])
    with torch.no_grad():
        generated = loaded.model.generate(input_ids=ids[:, :start], max_new_tokens=new_tokens, do_sample=False)
    assert ids[0, start:].tolist() == generated[0, start:start + new_tokens].tolist()
    reference = eager_forward(loaded.model, input_ids=ids)
    for layer, eager_maps in enumerate(reference.attentions):
        stats = trace.layer(layer)
        for stat, value in statistics_from_maps(eager_maps[0], trace.regions, causal=True).items():
            assert_close(stats[stat], value, what=f"{loaded.name} layer {layer} {stat}")
        prompt_maps = eager_maps[0][:, :start]  # the prompt's rows alone
        assert_close(stats["prompt_key_mass"], prompt_maps.double().sum(1), what=f"layer {layer} prompt_key_mass")
        assert_close(stats["prompt_key_count"], torch.tril(torch.ones(len(ids[0]), len(ids[0])))[:start].sum(0),
                     what=f"layer {layer} prompt_key_count")
    return trace


@pytest.mark.parametrize("name", ["tiny-gpt2", "tiny-llama"])
def test_decode_steps_equal_eager(models, name):
    _check_against_eager(models(name), "Once upon a time there was", NEW_TOKENS)


@pytest.mark.slow
def test_smollm2_decode_steps_equal_eager(models, one_torch_thread):
    trace = _check_against_eager(models("smollm2"), "Name three colours of the rainbow and say why.", 8)
    assert trace.checks["healthy"]


@pytest.mark.parametrize("name", ["tiny-gpt2", "tiny-llama"])
def test_predictions_equal_a_log_softmax_of_hf_logits(models, name):
    # every row, prompt and generated: log p of the next token and the entropy, from one full forward in fp64
    loaded = models(name)
    trace = workbench.trace(loaded, "Predictions for every row", max_new_tokens=4)
    ids = torch.tensor([[t.id for t in trace.tokens]])
    with torch.no_grad():
        log_p = torch.log_softmax(loaded.model(input_ids=ids).logits[0].double(), -1)  # [query_pos, vocab]
    entropy = -(log_p.exp() * log_p).sum(-1)
    next_logprob = log_p[:-1].gather(-1, ids[0, 1:, None])[:, 0]
    assert_close(trace.tensor("outputs.prediction_entropy"), entropy, what="entropy")
    stored = trace.tensor("outputs.next_token_logprob")
    assert_close(stored[:-1], next_logprob, what="next-token log p")
    assert torch.isnan(stored[-1])  # the last row's next token is unknown
