"""Labels known by construction: numbers against the records, scene answers and captions against the truth."""

from __future__ import annotations

import numpy as np
from workbench.probes import tasks
from workbench.probes.dataset import split


def test_numbers_label_the_wrong_value_tokens():
    truth = {"answer": "4821", "answerable": True}
    texts = ["R", "ita", "'s", " code", " is", " ", "4", "8", "2", "1", ".", "<|im_end|>"]
    right = tasks.label_numbers(truth, texts)
    assert (right.label, right.correct, sum(right.token_labels), sum(right.claim)) == (0, True, 0, 4)
    wrong = tasks.label_numbers(truth, texts[:6] + ["9", "9", "9", "9", "."])
    assert wrong.label == 1 and wrong.token_labels == [0] * 6 + [1] * 4 + [0]
    refused = tasks.label_numbers({"answer": "unknown", "answerable": False}, [" unknown", "."])
    assert (refused.label, refused.correct) == (0, True)
    invented = tasks.label_numbers({"answer": "unknown", "answerable": False}, ["It", " is", " 12", "."])
    assert invented.label == 1 and invented.token_labels == [0, 0, 1, 0]


def test_scene_captions_flag_only_hallucinated_objects():
    truth = {"type": "caption", "answer": "a red circle and a blue square.",
             "target": [["red", "circle"], ["blue", "square"]], "subtype": ""}
    texts = ["a", " red", " circle", ",", " a", " green", " triangle", " and", " a", " blue", " square", ".",
             "<|im_end|>"]
    labelled = tasks.label_scene(truth, texts)
    assert labelled.label == 1 and not labelled.correct
    assert [t for t, flag in zip(texts, labelled.token_labels) if flag] == [" green", " triangle"]
    assert [t for t, flag in zip(texts, labelled.claim) if flag] == [" red", " circle", " green", " triangle",
                                                                      " blue", " square"]
    omitted = tasks.label_scene(truth, ["a", " red", " circle", ".", "<|im_end|>"])
    assert omitted.label == 0 and not omitted.correct  # leaving an object out is not a hallucination


def test_scene_short_answers():
    truth = {"type": "presence", "answer": "no", "subtype": "absent-attribute-swap", "target": []}
    wrong = tasks.label_scene(truth, ["yes", "<|im_end|>"])
    assert (wrong.label, wrong.token_labels, wrong.claim) == (1, [1, 0], [1, 0])
    right = tasks.label_scene(truth, ["no", "<|im_end|>"])
    assert (right.label, right.token_labels) == (0, [0, 0])


def test_shipped_scenes_group_by_scene():
    from workbench.models.registry import data_root

    items = tasks.scene_items(data_root() / "scenes")
    assert len({item.group for item in items}) == 400
    sample = tasks.sample(items, 50)
    groups = {item.group for item in sample}
    assert all(item.group in groups for item in items if item.group in groups)  # whole scenes only
    assert sum(item.group in groups for item in items) == len(sample)
    test = split(np.array([item.group for item in items]), seed=0, test_fraction=0.2)
    by_group = {}
    for item, flag in zip(items, test):
        by_group.setdefault(item.group, set()).add(bool(flag))
    assert all(len(sides) == 1 for sides in by_group.values())
    assert 0.1 < test.mean() < 0.3


def test_claim_runs_are_the_examples_of_claims_mode():
    from workbench.probes.lookback import claim_runs

    claim = np.array([0, 1, 1, 0, 0, 1, 1, 0, 1])
    labels = np.array([0, 0, 0, 0, 0, 1, 1, 0, 0])
    assert claim_runs(claim, labels) == [(1, 3, 0), (5, 7, 1), (8, 9, 0)]
