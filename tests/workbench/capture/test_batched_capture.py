"""Batched capture (`Tracer.trace_batch`): each row of a left-padded forward equals its prompt traced alone, and a
short row's statistics equal those of HF eager maps over its own tokens (no padding leaks in)."""

from __future__ import annotations

import pytest
import torch
from PIL import Image

from tests.helpers import assert_close, eager_forward, statistics_from_maps
from workbench.capture import Tracer
from workbench.capture.backends import hf_batch
from workbench.capture.generation import greedy, greedy_rows
from workbench.capture.inputs import prepare_input
from workbench.models.tiny import tiny_qwen2_window

PROMPTS = ["Hi", "The quick brown fox jumps over the lazy dog, and then it runs far away into the deep dark forest",
           "Paris is the capital of"]


def assert_same_trace(batched, alone, *, what: str) -> None:
    """Tokens, every tensor (1e-5; NaN where the other has NaN) and the numerics verdict of two traces."""
    assert [t.id for t in batched.tokens] == [t.id for t in alone.tokens], f"{what}: generated tokens"
    assert [t.region for t in batched.tokens] == [t.region for t in alone.tokens], f"{what}: regions"
    assert sorted(batched.tensor_names()) == sorted(alone.tensor_names()), f"{what}: tensor names"
    for name in alone.tensor_names():
        got, expected = batched.tensor(name), alone.tensor(name)
        assert got.shape == expected.shape, f"{what}: {name} shape"
        if got.dtype.is_floating_point:
            assert torch.equal(got.isnan(), expected.isnan()), f"{what}: {name} NaN places"
            # residual vectors (|x| up to ~20 here) come out of batched matmuls: 1e-5 of their scale
            scale = float(expected.nan_to_num(0).abs().max()) if name.endswith("hidden_in") else 1.0
            assert_close(got.nan_to_num(0), expected.nan_to_num(0), atol=1e-5 * max(scale, 1.0),
                         what=f"{what}: {name}")
        elif name.endswith("top_index"):  # keys whose weights tie within rounding may come in either order, and
            # a row that sees fewer than k keys fills its list with hidden keys of weight 0 in no set order
            weights = alone.tensor(name.replace("top_index", "top_weight"))
            gaps = weights.diff(dim=-1).abs()
            clear = weights > 0
            clear[..., 1:] &= gaps > 1e-4
            clear[..., :-1] &= gaps > 1e-4
            assert torch.equal(got[clear], expected[clear]), f"{what}: {name}"
        else:
            assert torch.equal(got, expected), f"{what}: {name}"
    assert batched.checks["healthy"] and batched.generation == alone.generation, what


@pytest.mark.parametrize("name", ["tiny-llama", "tiny-gpt2", "tiny-qwen2-window"])
def test_batched_equals_one_at_a_time(models, one_torch_thread, name):
    tracer = Tracer.open(tiny_qwen2_window() if name == "tiny-qwen2-window" else models(name))
    options = {"max_new_tokens": 5, "hidden_states": name == "tiny-llama"}
    batched = tracer.trace_batch(PROMPTS, **options)
    assert batched[0].meta["capture"]["kernels_run"] == {"text": {"one-pass": batched[0].n_layers() * 6}}
    for prompt, trace in zip(PROMPTS, batched, strict=True):
        assert_same_trace(trace, tracer.trace(prompt, **options), what=f"{name} {prompt[:12]!r}")


def test_two_pass_statistics_batched(models, one_torch_thread):
    """top-k and maps take SDPA plus the two-pass statistics: row slices of the batch go that way too."""
    tracer = Tracer.open(models("tiny-llama"))
    options = {"max_new_tokens": 3, "top_k": 4, "maps": "0", "map_dtype": "float32"}
    for prompt, trace in zip(PROMPTS, tracer.trace_batch(PROMPTS, **options), strict=True):
        assert_same_trace(trace, tracer.trace(prompt, **options), what=f"two-pass {prompt[:12]!r}")


def test_a_row_that_stops_early(models, one_torch_thread, monkeypatch):
    """One row meets an end-of-sequence token after two tokens; the others go on, and each equals its trace alone."""
    loaded = models("tiny-llama")
    tracer = Tracer.open(loaded)
    free = [tracer.generate(p, max_new_tokens=6).token_ids for p in PROMPTS]
    stop = free[0][1]
    assert all(stop not in ids for ids in free[1:]) and stop not in free[0][:1], "pick prompts whose answers differ"
    monkeypatch.setattr(loaded.model.generation_config, "eos_token_id", stop)
    batched = tracer.trace_batch(PROMPTS, max_new_tokens=6)
    assert [len(t.tokens) - t.generation["start"] for t in batched] == [2, 6, 6]
    for prompt, trace in zip(PROMPTS, batched, strict=True):
        assert_same_trace(trace, tracer.trace(prompt, max_new_tokens=6), what=f"eos {prompt[:12]!r}")


def test_padding_does_not_leak_into_statistics(models, one_torch_thread, monkeypatch):
    """The shortest row of a batch (most padding) against eager maps of its own tokens alone, whatever token the
    padding carries: column sums, counts and region shares see no padded key."""
    loaded = models("tiny-llama")
    tracer = Tracer.open(loaded)
    for pad in (0, 7):
        monkeypatch.setattr(hf_batch, "pad_token_id", lambda loaded, pad=pad: pad)
        short, long = tracer.trace_batch(PROMPTS[:2])
        n = len(short.tokens)
        assert n + 10 < len(long.tokens) and short.dims["tokens"] == n
        reference = eager_forward(loaded.model, input_ids=torch.tensor([[t.id for t in short.tokens]]))
        for layer, maps in enumerate(reference.attentions):
            stats = short.layer(layer)
            for stat, value in statistics_from_maps(maps[0], short.regions, causal=True).items():
                assert_close(stats[stat], value, what=f"pad {pad} layer {layer} {stat}")
            assert_close(stats["key_mass"].sum(-1), torch.full((maps.shape[1],), float(n)), what="mass of real keys")


def test_vlm_batch_of_images(models, one_torch_thread):
    loaded = models("tiny-llava")
    tracer = Tracer.open(loaded)
    images = [Image.new("RGB", (40 + 8 * i, 32), colour) for i, colour in enumerate([(200, 30, 30), (20, 180, 40),
                                                                                        (30, 30, 210)])]
    prompts = ["What is this?", "Describe the colour of the picture in a few words", "Colour?"]
    batched = tracer.trace_batch(prompts, images, max_new_tokens=3)
    assert "vision" in batched[0].stacks
    for prompt, image, trace in zip(prompts, images, batched, strict=True):
        assert_same_trace(trace, tracer.trace(prompt, image, max_new_tokens=3), what=f"llava {prompt[:8]!r}")


def test_unbatchable_inputs_are_traced_one_at_a_time(models, one_torch_thread):
    loaded = models("tiny-llava")
    tracer = Tracer.open(loaded)
    image = Image.new("RGB", (32, 32), (90, 90, 90))
    prepared = [prepare_input(loaded, "With a picture", image), prepare_input(loaded, "Without", None)]
    assert hf_batch.batchable(loaded, prepared, tracer.plan()) == "inputs with and without images"
    mixed = tracer.trace_batch(["With a picture", "Without"], [image, None], max_new_tokens=2)
    assert "vision" in mixed[0].stacks and "vision" not in mixed[1].stacks
    assert_same_trace(mixed[1], tracer.trace("Without", max_new_tokens=2), what="text row of a mixed batch")


def test_greedy_rows_stop_each_row_on_its_own():
    """Rows of a planted logit table: row r's next token is table[r][step]; token 9 ends a sequence."""
    table = [[1, 9, 4], [2, 3, 5], [9, 0, 0]]
    steps = {"fed": []}

    def logits_for(row: int, step: int) -> torch.Tensor:
        values = torch.zeros(10)
        values[table[row][min(step, 2)]] = 1.0
        return values

    def feed(fed: dict[int, int]) -> torch.Tensor:
        steps["fed"].append(sorted(fed))
        step = len(steps["fed"])
        return torch.stack([logits_for(row, step) for row in range(3)])

    first = torch.stack([logits_for(row, 0) for row in range(3)])
    ids = greedy_rows(first, feed, max_new_tokens=3, eos={9}, feed_last=True)
    assert ids == [[1, 9], [2, 3, 5], [9]]
    assert steps["fed"] == [[0, 1, 2], [0, 1], [1]]
    for row in range(3):  # the one-row loop agrees
        alone = greedy(logits_for(row, 0), lambda token, row=row, box=[0]: (box.__setitem__(0, box[0] + 1),
                       logits_for(row, box[0]))[1], max_new_tokens=3, eos={9})
        assert alone == ids[row]


@pytest.mark.slow
def test_smollm2_batched_equals_one_at_a_time(models, one_torch_thread):
    tracer = Tracer.open(models("smollm2"))
    prompts = ["Hello!", "Name three colours of the rainbow and say why each one appears."]
    batched = tracer.trace_batch(prompts, max_new_tokens=4)
    for prompt, trace in zip(prompts, batched, strict=True):
        assert_same_trace(trace, tracer.trace(prompt, max_new_tokens=4), what=f"smollm2 {prompt[:8]!r}")


@pytest.mark.parametrize("name,with_images", [("tiny_qwen2_vl", False), ("tiny_internvl", True),
                                              ("tiny_paligemma", False)])
def test_other_vlm_families(one_torch_thread, name, with_images):
    """Multimodal-RoPE positions (Qwen2-VL) on text, InternVL with an image per row, and PaliGemma (1-based
    positions, prefix attention: traced one at a time) all equal their inputs traced alone."""
    from workbench.models import tiny_vlm

    tracer = Tracer.open(getattr(tiny_vlm, name)())
    prompts = ["Hi", "A longer prompt with more words in it"]
    images = [Image.new("RGB", (32, 32), (200, 20, 20)), Image.new("RGB", (32, 32), (20, 20, 200))] \
        if with_images else [None, None]
    for prompt, image, trace in zip(prompts, images, tracer.trace_batch(prompts, images, max_new_tokens=2),
                                    strict=True):
        assert_same_trace(trace, tracer.trace(prompt, image, max_new_tokens=2), what=f"{name} {prompt!r}")
