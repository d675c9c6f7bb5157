"""`workbench opera` and `workbench blind`: bad options end in one `error:` line (exit 2) before any model loads; a
bundle gets its results stored and its JSON export carries them."""

from __future__ import annotations

import json

import pytest

import workbench
from tests.workbench.cli.cli_inprocess import run_cli

IMAGE = "data/scenes/images/scene_0001.png"


@pytest.mark.parametrize("args,message", [
    (["opera"], "give exactly one of BUNDLE"),
    (["opera", "--prompt", "hi"], "need --model"),
    (["opera", "-m", "no-such-model", "-p", "hi", "--window", "0"], "--window"),
    (["opera", "-m", "no-such-model", "-p", "hi", "--scale", "nan"], "--scale"),
    (["opera", "-m", "no-such-model", "-p", "hi", "--threshold", "-1"], "--threshold"),
    (["blind", "-m", "no-such-model", "-p", "hi"], "--prompt needs --image"),
    (["blind", "-m", "no-such-model", "--scenes", "data/scenes", "--intervene", "act"], "workbench trace --intervene"),
    (["blind", "-m", "no-such-model", "--scenes", "data/scenes", "--intervene", "avc:beta=0"], "avc: beta"),
    (["blind", "-m", "no-such-model", "--scenes", "data/scenes", "--intervene", "damro:top_k=0"], "top_k"),
    (["blind", "-m", "no-such-model", "--scenes", "data/scenes", "--layer-gamma", "0"], "--layer-gamma"),
    (["blind", "-m", "no-such-model", "--scenes", "data/scenes", "--lamb", "nan"], "--lamb"),
    (["trace", "-m", "tiny-gpt2", "-p", "hi", "--intervene", "damro"], "tiny-gpt2 takes no image"),
    (["trace", "-m", "tiny-llava", "-p", "hi", "--intervene", "avc:alpha=-1"], "avc: alpha"),
])
def test_bad_options_end_in_one_line_before_loading(args, message):
    code, _, err = run_cli(*args)
    assert code == 2 and len(err.strip().splitlines()) == 1 and err.startswith("error:"), err
    assert message in err and "no-such-model" not in err


def test_bundles_store_both_results_and_the_export_carries_them(tmp_path):
    bundle = tmp_path / "v.wbtrace"
    workbench.trace("tiny-llava", "Describe the picture", image=IMAGE, max_new_tokens=3).save(bundle)
    code, _, err = run_cli("opera", str(bundle))
    assert code == 0, err
    code, _, err = run_cli("blind", str(bundle), "--top-k", "3")
    assert code == 0, err
    exported = workbench.load(bundle).to_json()["results"]
    assert exported["opera"]["analysis"] == "opera" and len(exported["opera"]["tokens"]) == 3
    assert len(exported["blind_tokens"]["outliers"]) == 3
    json.dumps(exported, allow_nan=False)
    code, _, err = run_cli("blind", "-m", "tiny-llama", "-p", "hi", "--image", IMAGE)
    assert code == 2 and "takes no image" in err


def test_caption_objects_are_labelled_against_the_scene():
    from workbench.cli.opera_scenes import objects

    words = ["a", " red", " circle", " and", " a", " green", " square", "."]
    tokens = [{"text": w} for w in words]
    found = objects(tokens, [["red", "circle"], ["blue", "square"]])
    assert [(o["step"], o["colour"], o["shape"], o["hallucinated"]) for o in found] == [
        (2, "red", "circle", False), (6, "green", "square", True)]
