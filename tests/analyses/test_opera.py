"""OPERA over-trust scores: the planted hidden-sink head's column on "." (planted ground truth), the reference's
formula recomputed from HF eager maps (tiny planted model fast, SmolLM2 slow), JSON round trip, option checks."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from tests.helpers import eager_forward
from workbench.analyses import opera as opera_module
from workbench.analyses.opera import OperaResult, opera
from workbench.capture import Tracer
from workbench.errors import InputError

CONTINUATION = "the cat sat. and then it ran away from the dog"


def _ids(loaded, text: str) -> list[int]:
    ids = loaded.tokenizer(text)["input_ids"]
    return [i for i in ids if i != loaded.tokenizer.bos_token_id]


def reference_scores(loaded, prompt_ids: torch.Tensor, continuation: list[int], *, scale=50.0, layer=-1):
    """The reference's recipe written out on eager maps of the whole sequence: last layer, max over heads, rows
    renormalised, the block of generated rows x generated columns, 1e-7 * prod_{i >= c} scale * W[i, c]."""
    ids = torch.cat([prompt_ids, torch.tensor([continuation])], 1)
    maps = eager_forward(loaded.model, input_ids=ids).attentions[layer][0].double()  # [head, query, key]
    rows = maps.amax(0)
    rows = rows / rows.sum(-1, keepdim=True)
    start = prompt_ids.shape[1]
    scores, columns = [], []
    for step in range(len(continuation)):
        end = start + step + 1
        block = rows[start:end, start:end]
        best, best_column = -math.inf, -1
        for c in range(end - start):
            value = -7.0 + sum(math.log10(scale * float(block[i, c])) for i in range(c, end - start))
            if value > best:
                best, best_column = value, start + c
        scores.append(best)
        columns.append(best_column)
    return np.array(scores), np.array(columns)


def _prompt_ids(loaded, prompt: str) -> torch.Tensor:
    from workbench.capture.inputs import prepare_input

    return prepare_input(loaded, prompt, raw=True).input_ids


def test_planted_hidden_sink_forms_the_column(models):
    """planted-sink's head (2, 2) sends >= 0.9 of every later query's attention to "." (its ground truth): from the
    period on, the summary column is the period and the score grows by at least log10(50 * 0.9 / 4) per step
    (max over 4 heads, renormalised by at most 4); before it no column builds up (score stays below 1e-7 * 50)."""
    loaded = models("planted-sink")
    continuation = _ids(loaded, CONTINUATION)
    result = opera(Tracer.open(loaded), "Hello there my friend", continuation=continuation, raw=True)
    period = next(t["position"] for t in result.tokens if t["text"] == ".")
    after = [i for i, t in enumerate(result.tokens) if t["position"] >= period]
    assert all(result.summary[i] == period for i in after)
    rises = np.diff(result.log10_score[after])
    assert (rises >= math.log10(50 * 0.9 / 4)).all()
    before = [i for i, t in enumerate(result.tokens) if t["position"] < period]
    assert (result.log10_score[before] < -7 + math.log10(50)).all()
    # retrospection (reference rule): the period is >= 10 tokens in, and is the argmax at > 15 steps from then on
    first = np.flatnonzero(result.retrospection)
    assert period - result.tokens[0]["position"] >= 10
    assert first[0] == after[0] + 15


def test_scores_equal_the_formula_on_eager_maps(models):
    loaded = models("planted-sink")
    continuation = _ids(loaded, CONTINUATION)
    result = opera(Tracer.open(loaded), "Hello there my friend", continuation=continuation, raw=True)
    expected, columns = reference_scores(loaded, _prompt_ids(loaded, "Hello there my friend"), continuation)
    assert np.abs(result.log10_score - expected).max() < 1e-5  # fp32 maps, cached vs one forward
    assert (result.summary == columns).all()


def test_window_keeps_only_the_last_rows(models):
    """window=k: the product runs over the last k generated rows, columns among them (checked on eager maps)."""
    loaded = models("planted-sink")
    continuation = _ids(loaded, CONTINUATION)
    result = opera(Tracer.open(loaded), "Hello there my friend", continuation=continuation, raw=True, window=4)
    prompt_ids = _prompt_ids(loaded, "Hello there my friend")
    ids = torch.cat([prompt_ids, torch.tensor([continuation])], 1)
    rows = eager_forward(loaded.model, input_ids=ids).attentions[-1][0].double().amax(0)
    rows = rows / rows.sum(-1, keepdim=True)
    start = prompt_ids.shape[1]
    for step in range(len(continuation)):
        end = start + step + 1
        first = max(start, end - 4)
        block = rows[first:end, first:end]
        logs = [-7 + sum(math.log10(50 * float(block[i, c])) for i in range(c, end - first)) for c in range(end - first)]
        assert result.log10_score[step] == pytest.approx(max(logs), abs=1e-5)


def test_json_round_trip_and_option_checks(models):
    loaded = models("planted-sink")
    result = opera(Tracer.open(loaded), "Hello there", continuation=_ids(loaded, "ab. cd"), raw=True)
    back = OperaResult.from_json(result.to_json())
    assert back.tokens == result.tokens and (back.summary == result.summary).all()
    assert np.allclose(back.log10_score, result.log10_score, atol=1e-6)
    assert np.isnan(back.image_attention).all()  # a text model has no image
    for bad in ({"scale": 0}, {"window": 0}, {"threshold": -1}):
        with pytest.raises(InputError):
            opera_module.check_options(**{"scale": 50.0, "window": None, "threshold": 15, **bad})


def test_image_attention_is_the_row_share_on_image_tokens(models):
    loaded = models("planted-llava")
    result = opera(Tracer.open(loaded), "What is in the picture?", "data/scenes/images/scene_0000.png",
                   max_new_tokens=3)
    assert ((result.image_attention > 0) & (result.image_attention <= 1 + 1e-9)).all()


@pytest.mark.slow
def test_smollm2_scores_equal_the_formula_on_eager_maps(models):
    loaded = models("smollm2")
    prompt = "The capital of France is Paris. The capital of Italy is"
    result = opera(Tracer.open(loaded), prompt, max_new_tokens=8, raw=True)
    continuation = [t["id"] for t in result.tokens]
    expected, columns = reference_scores(loaded, _prompt_ids(loaded, prompt), continuation)
    assert np.abs(result.log10_score - expected).max() < 1e-4
    assert (result.summary == columns).all()
