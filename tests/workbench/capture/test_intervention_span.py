"""Interventions edit keys by absolute position: on sliding-window models they are refused past the window."""

from __future__ import annotations

import pytest

from workbench.capture import Tracer
from workbench.errors import InputError
from workbench.interventions import parse
from workbench.models.tiny import TINY_SLIDING_WINDOW


def test_intervention_past_the_window_is_refused_before_any_forward(models):
    tracer = Tracer.open(models("tiny-gemma3"))
    with pytest.raises(InputError, match=f"over {TINY_SLIDING_WINDOW} positions"):
        tracer.trace("word " * (2 * TINY_SLIDING_WINDOW), max_new_tokens=2, intervention=parse("act:beta=0.4"))


def test_intervention_within_the_window_and_on_full_attention_models_runs(models):
    short = Tracer.open(models("tiny-gemma3")).trace("hi", raw=True, max_new_tokens=1, intervention=parse("act:beta=0.4"))
    assert "intervention" in short.meta["capture"]
    long = Tracer.open(models("tiny-llama")).trace("word " * 40, max_new_tokens=2, intervention=parse("act:beta=0.4"))
    assert "intervention" in long.meta["capture"]
