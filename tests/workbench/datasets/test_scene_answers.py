"""Full-sentence scene answers: the answer word's place in a generation, the sentence form written out by hand,
and the generation budget against hand-counted sentences."""

from __future__ import annotations

import pytest

from workbench.cli.vhd_scenes import answer_steps
from workbench.datasets import scenes
from workbench.datasets.scene_answers import answer_token_budget, sentence_answer


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


@pytest.mark.parametrize("kind, target, answer, sentence", [
    ("presence", [["red", "circle"]], "yes", "Yes, there is a red circle."),
    ("presence", [["red", "circle"]], "no", "No, there is no red circle."),
    ("colour", [["red", "circle"]], "purple", "The circle is purple."),
    ("shape", [["red", "circle"]], "diamond", "The red object is a diamond."),
    ("count", [["red", "circle"]], "1", "There is 1 shape."),
    ("count", [["red", "circle"], ["blue", "square"]], "3", "There are 3 shapes."),
    ("position", [["red", "circle"], ["blue", "square"]], "right", "The red circle is to the right of the blue square."),
    ("position", [["red", "circle"], ["blue", "square"]], "above", "The red circle is above the blue square."),
])
def test_sentence_answers_are_written_out(kind, target, answer, sentence):
    """The sentence form smol-llava is trained on (data/models/smol_llava/examples.py writes its training answers
    with this function), written out by hand; the dict read from questions.jsonl gives the same sentence."""
    qa = scenes.QA(kind, "?", "yes", None, "", target)
    assert sentence_answer(qa, answer) == sentence
    assert sentence_answer(qa.to_json(), answer) == sentence


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
