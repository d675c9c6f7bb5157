"""Analyses that run a traced VLM input again (VHD, OPERA, blind tokens) take the image through one check: another
picture than the one traced is refused in one line instead of being analysed as if it were the trace's."""

from __future__ import annotations

import pytest

import workbench
from workbench.analyses import blind_tokens, divergence, opera
from workbench.capture import Tracer
from workbench.errors import InputError

TRACED, OTHER = "data/scenes/images/scene_0001.png", "data/scenes/images/scene_0002.png"


@pytest.fixture(scope="module")
def traced(models):
    loaded = models("tiny-llava")
    return Tracer.open(loaded, copy_model=False), workbench.trace(loaded, "Describe", image=TRACED, max_new_tokens=3)


@pytest.mark.parametrize("analysis", [blind_tokens, divergence, opera], ids=lambda m: m.__name__.rsplit(".")[-1])
def test_another_image_is_refused(traced, analysis):
    tracer, trace = traced
    with pytest.raises(InputError, match="not the image this trace was made with"):
        analysis.analyse(trace, tracer=tracer, image=OTHER)


@pytest.mark.parametrize("analysis", [blind_tokens, opera], ids=lambda m: m.__name__.rsplit(".")[-1])
def test_the_recorded_image_is_found_and_used(traced, analysis):
    tracer, trace = traced
    found, given = (analysis.analyse(trace, tracer=tracer, **image).to_json() for image in ({}, {"image": TRACED}))
    found.pop("cost", None), given.pop("cost", None)  # timings differ run to run
    assert found == given
