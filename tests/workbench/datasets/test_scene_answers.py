"""Full-sentence scene answers: the answer word's place in a generation, the sentence form against smol-llava's
own training sentences, and the generation budget against hand-counted sentences."""

from __future__ import annotations

import importlib.util
import random

import pytest

from workbench.cli.vhd_scenes import answer_steps
from workbench.datasets import scenes
from workbench.datasets.scene_answers import answer_token_budget, sentence_answer
from workbench.models.registry import data_root


@pytest.mark.parametrize("kind, text, word", [
    ("presence", "No, there is no red circle.<|im_end|>", "No"),
    ("presence", " Yes<|im_end|>", "Yes"),
    ("colour", "The circle is red.<|im_end|>", "red"),
    ("colour", "The red circle is purple.", "purple"),  # the subject names a colour too: the last one answers
    ("shape", "The red object is a circle.", "circle"),
    ("count", "There are 2 shapes.<|im_end|>", "2"),
    ("position", "The red circle is to the left of the blue square.<|im_end|>", "left"),
])
def test_stated_answer_span_is_where_the_answer_word_is(kind, text, word):
    # the expected offsets from str.rindex / str.index, not from the regex the code uses
    start = text.rindex(word) if kind in ("colour", "shape", "count") else text.index(word)
    assert scenes.stated_answer_span(kind, text) == (start, start + len(word))
    assert scenes.stated_answer(kind, text) == word.lower()


def test_no_span_when_no_answer_word_is_stated():
    assert scenes.stated_answer_span("presence", "There is a red circle, yes.") is None
    assert scenes.stated_answer_span("colour", "There is no triangle in the image.") is None
    assert scenes.stated_answer_span("count", "<|im_end|>two shapes") is None  # after the end of turn: not said


def test_answer_steps_cover_the_tokens_of_the_span():
    tokens = ["The", " circle", " is", " pur", "ple", ".", "<|im_end|>"]
    text = "".join(tokens)
    assert answer_steps(tokens, scenes.stated_answer_span("colour", text)) == [3, 4]
    assert answer_steps(["yes", "<|im_end|>"], scenes.stated_answer_span("presence", "yes<|im_end|>")) == [0]
    assert answer_steps(tokens, None) == [0] and answer_steps([], None) == []


def test_sentence_answers_are_smol_llava_training_sentences():
    """The sentence form must be the one smol-llava is trained on (its own examples module, written separately)
    for every short question of 40 held-out scenes, with every answer word."""
    spec = importlib.util.spec_from_file_location(
        "smol_llava_examples_for_budget", data_root() / "models" / "smol_llava" / "examples.py")
    examples = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(examples)
    import dataclasses

    checked = 0
    for index in range(40):
        for qa in scenes.heldout_questions(scenes.heldout_scene(index), random.Random(index)):
            for answer in scenes.ANSWER_WORDS.get(qa.type, (qa.answer,)):
                expected = examples.sentence(dataclasses.replace(qa, answer=answer))
                assert sentence_answer(qa, answer) == expected
                assert sentence_answer(qa.to_json(), answer) == expected  # the form read from questions.jsonl
                checked += 1
    assert checked > 800


class Words:
    """A planted tokenizer: one token per whitespace-separated word."""

    def encode(self, text, add_special_tokens=False):
        return text.split()


def test_budget_covers_the_longest_answer_word_plus_end_of_turn():
    presence = {"type": "presence", "answer": "yes", "target": [["red", "circle"]], "question": "Is there a red circle?"}
    position = {"type": "position", "answer": "above", "target": [["purple", "triangle"], ["blue", "square"]],
                "question": "Where is the purple triangle relative to the blue square?"}
    # "No, there is no red circle." is 6 words; "The purple triangle is to the right of the blue square." is 11,
    # though the true answer ("... is above the blue square.") is 8: a wrong answer may be longer
    assert answer_token_budget(Words(), [presence]) == 6 + 1
    assert answer_token_budget(Words(), [presence, position]) == 11 + 1
    with pytest.raises(ValueError):
        answer_token_budget(Words(), [])
