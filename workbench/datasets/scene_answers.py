"""The full-sentence answer form of the scene questions (workbench.datasets.scenes), and the generation budget it
needs. A sentence answer restates the question's subject before the answer word ("Is there a red circle?" ->
"No, there is no red circle."), as `smol-llava` is trained to answer; `scenes.stated_answer` reads the answer
word back out of such a sentence (or of a bare short answer).

Scene evaluations generate greedily until the model's end of turn, so the budget only has to let the longest
answer a model may give finish: `answer_token_budget` measures it with the model's own tokenizer instead of a
fixed count (a short-answer model stops after one or two tokens whatever the budget).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable

from workbench.datasets.scenes import ANSWER_WORDS, QA

RELATION_PHRASES = {"left": "to the left of", "right": "to the right of", "above": "above", "below": "below"}


def _as_qa(qa: QA | dict) -> QA:
    """A question as read from questions.jsonl (a dict with extra fields) or built in code (a QA)."""
    return QA(**{f.name: qa[f.name] for f in dataclasses.fields(QA) if f.name in qa}) if isinstance(qa, dict) else qa


def sentence_answer(qa: QA | dict, answer: str | None = None) -> str:
    """The sentence that answers `qa` with `answer` (its true answer by default), restating the subject first."""
    qa = _as_qa(qa)
    answer = qa.answer if answer is None else answer
    if qa.type == "presence":
        colour, shape = qa.target[0]
        return f"Yes, there is a {colour} {shape}." if answer == "yes" else f"No, there is no {colour} {shape}."
    if qa.type == "colour":
        return f"The {qa.target[0][1]} is {answer}."
    if qa.type == "shape":
        return f"The {qa.target[0][0]} object is a {answer}."
    if qa.type == "count":
        return "There is 1 shape." if answer == "1" else f"There are {answer} shapes."
    if qa.type == "position":
        (colour_a, shape_a), (colour_b, shape_b) = qa.target
        return f"The {colour_a} {shape_a} is {RELATION_PHRASES[answer]} the {colour_b} {shape_b}."
    if qa.type == "caption":
        return "The image shows " + answer
    raise ValueError(f"no sentence answer for question type {qa.type!r}")


def answer_token_budget(tokenizer, questions: Iterable[QA | dict]) -> int:
    """New tokens enough for the longest sentence answer to any of `questions`, whichever answer word it states
    (a wrong answer may be the longer one: "purple", "to the right of"), plus one for the end-of-turn token.
    tokenizer: the model's (anything with `encode(text, add_special_tokens=False)`)."""
    longest = 0
    for qa in map(_as_qa, questions):
        for answer in ANSWER_WORDS.get(qa.type, (qa.answer,)):
            longest = max(longest, len(tokenizer.encode(sentence_answer(qa, answer), add_special_tokens=False)))
    if not longest:
        raise ValueError("no question to size the answer budget on")
    return longest + 1
