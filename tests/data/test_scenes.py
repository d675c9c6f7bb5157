"""The scene generator and the shipped held-out set: pixels, patches and answers agree with the scene truth."""

from __future__ import annotations

import json
import random
from collections import Counter

import numpy as np
import pytest
from PIL import Image

from workbench.datasets import scenes
from workbench.models.registry import data_root

SCENES = data_root() / "scenes"


@pytest.fixture(scope="module")
def shipped():
    scene_records = [json.loads(line) for line in (SCENES / "scenes.jsonl").read_text().splitlines()]
    questions = [json.loads(line) for line in (SCENES / "questions.jsonl").read_text().splitlines()]
    return {record["id"]: record for record in scene_records}, questions


def test_heldout_set_is_reproducible(tmp_path, shipped):
    records, _ = shipped
    for index in (0, 7, 399):
        scene = scenes.heldout_scene(index)
        record = records[f"scene_{index:04d}"]
        assert json.loads(json.dumps(scene.to_json())) == {k: v for k, v in record.items() if k not in ("id", "image")}
        shipped_pixels = np.asarray(Image.open(SCENES / record["image"]).convert("RGB"))
        assert np.array_equal(np.asarray(scenes.render(scene)), shipped_pixels)
    assert len(records) == 400 and (SCENES / "README.md").exists()


def test_rendered_pixels_show_the_objects(shipped):
    """Independent of the generator's bookkeeping: the pixel at each object's centre has that object's colour."""
    records, _ = shipped
    checked = 0
    for record in records.values():
        if record["noise"]:
            continue
        image = np.asarray(Image.open(SCENES / record["image"]).convert("RGB")).astype(int)
        for obj in record["objects"]:
            x, y = obj["cx"], obj["cy"] + (2 if obj["shape"] == "triangle" else 0)  # a triangle's mass sits low
            nearest = min(scenes.COLOURS, key=lambda c: np.abs(image[y, x] - scenes.COLOURS[c]).sum())
            assert nearest == obj["colour"], (record["id"], obj)
            checked += 1
    assert checked > 200


def test_patch_objects_cover_each_object(shipped):
    records, _ = shipped
    for record in records.values():
        labels = record["patch_objects"]
        assert len(labels) == 36
        for index, obj in enumerate(record["objects"]):
            covered = [k for k, label in enumerate(labels) if label == index]
            assert covered, (record["id"], obj)
            assert all([k // 6, k % 6] in obj["patches"] for k in covered)


def _truth(record, question):
    """Answers recomputed from the object list alone (no generator code)."""
    objects = [(o["colour"], o["shape"]) for o in record["objects"]]
    words = question["question"].rstrip("?.").split()
    if question["type"] == "presence":
        return "yes" if (words[3], words[4]) in objects else "no"
    if question["type"] == "colour":
        return next(c for c, s in objects if s == words[-1])
    if question["type"] == "shape":
        return next(s for c, s in objects if c == words[-2])
    if question["type"] == "count":
        return str(len(objects))
    if question["type"] == "position":
        a = next(o for o in record["objects"] if [o["colour"], o["shape"]] == words[3:5])
        b = next(o for o in record["objects"] if [o["colour"], o["shape"]] == words[-2:])
        dx, dy = a["cx"] - b["cx"], a["cy"] - b["cy"]
        return ("left" if dx < 0 else "right") if abs(dx) > abs(dy) else ("above" if dy < 0 else "below")
    ordered = sorted(record["objects"], key=lambda o: (o["cx"], o["cy"]))
    return sorted((o["colour"], o["shape"]) for o in ordered)


def test_answers_agree_with_the_scene_truth(shipped):
    records, questions = shipped
    for question in questions:
        record = records[question["scene"]]
        expected = _truth(record, question)
        if question["type"] == "caption":
            assert sorted(scenes.caption_objects(question["answer"])) == expected
        else:
            assert question["answer"] == expected, question


def test_prior_conflicts_are_plentiful_and_well_labelled(shipped):
    records, questions = shipped
    kinds = Counter(q["subtype"] for q in questions if q["type"] == "presence")
    assert kinds["absent-attribute-swap"] >= 150 and kinds["absent-cooccurrence"] >= 50
    for question in questions:
        if question["subtype"] in ("absent-attribute-swap", "absent-cooccurrence"):
            assert question["answer"] == "no" and question["prior_answer"] == "yes" and question["conflicts"]
            colour, shape = question["target"][0]
            objects = [(o["colour"], o["shape"]) for o in records[question["scene"]]["objects"]]
            if question["subtype"] == "absent-attribute-swap":
                assert colour == scenes.TYPICAL_COLOUR[shape] and shape in {s for _, s in objects}
            else:
                assert scenes.TRIGGER in objects and (colour, shape) == scenes.PARTNER


def test_training_distribution_carries_the_prior():
    rng = random.Random(0)
    objects = [o for _ in range(2000) for o in scenes.sample_scene(rng, scenes.TRAIN_PRIOR).objects]
    typical = sum(o.colour == scenes.TYPICAL_COLOUR[o.shape] for o in objects) / len(objects)
    assert 0.85 < typical < 0.95
    scenes_with_trigger = [s for s in (scenes.sample_scene(rng) for _ in range(3000)) if s.has(*scenes.TRIGGER)]
    assert sum(s.has(*scenes.PARTNER) for s in scenes_with_trigger) / len(scenes_with_trigger) > 0.85


def test_scoring():
    qa = {"type": "caption", "answer": "a red circle and a blue square."}
    assert scenes.is_correct(qa, "a blue square and a red circle.<|im_end|>")
    assert not scenes.is_correct(qa, "a red circle, a blue square and a green triangle.")
    assert scenes.is_correct({"type": "presence", "answer": "yes"}, " Yes<|im_end|>")


def test_sentence_answers_are_scored_by_their_answer_word():
    """smol-llava answers in sentences that restate the subject. Its training sentences (written by
    scene_answers.sentence_answer, not by the scorer) must score correct for the true answer and wrong for every
    other answer word, for every short-answer question of 40 held-out scenes."""
    from tests.helpers import held_out_sentence_answers

    checked = 0
    for qa, word, sentence in held_out_sentence_answers(40):
        if word == qa.answer:
            assert scenes.is_correct(qa, sentence + "<|im_end|>"), sentence
            checked += 1
        else:
            assert not scenes.is_correct(qa, sentence), sentence
            assert scenes.stated_answer(qa.type, sentence) == word
    assert checked > 200
    # what is not an answer stays unscored: no first-word yes/no, no answer word at all
    assert not scenes.is_correct({"type": "presence", "answer": "yes"}, "There is a red circle, yes.")
    assert not scenes.is_correct({"type": "colour", "answer": "red"}, "The circle.")
