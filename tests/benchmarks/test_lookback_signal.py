"""benchmarks/lookback_signal.py reads the answer word of every answer format the scene models produce: one word
(llava-scenes), "subject: word." (the restated-answers experiment) and full sentences (smol-llava). Rows 3 and 4
of its table (asserting claims; predict the answer) select generations by that word, so a format it cannot read
silently empties or mixes them."""

from __future__ import annotations

import importlib.util
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _module(name: str, path: Path):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_answer_word_of_smol_llava_sentences():
    """The sentences are smol-llava's training sentences, written from a planted answer word."""
    from tests.helpers import held_out_sentence_answers

    signal = _module("lookback_signal_under_test", ROOT / "benchmarks" / "lookback_signal.py")
    checked = 0
    for qa, word, sentence in held_out_sentence_answers(10):
        text = sentence + "<|im_end|>"
        assert signal.answer_word(f"scenes/{qa.type}", text) == word, text
        checked += 1
    assert checked > 200


def test_answer_word_of_short_and_restated_answers_and_what_asserts():
    signal = _module("lookback_signal_under_test", ROOT / "benchmarks" / "lookback_signal.py")
    word = signal.answer_word
    assert word("scenes/presence", " Yes<|im_end|>") == "yes"
    assert word("scenes/presence", "a red circle: yes.<|im_end|>") == "yes"
    assert word("scenes/colour", "the square: blue.") == "blue"
    assert word("scenes/colour", "the triangle: none.") == "none"
    assert word("scenes/presence", "No, there is no red circle.") == "no"

    asserts = signal.asserts_something
    assert asserts("scenes/presence", "yes") and not asserts("scenes/presence", "no")
    assert asserts("scenes/colour", "blue") and asserts("scenes/shape", "circle")
    assert not asserts("scenes/colour", "none")
    refusal = word("scenes/colour", "There is no triangle in the image.<|im_end|>")
    assert not asserts("scenes/colour", refusal), refusal
    assert asserts("scenes/caption", "the image shows a red circle")
    assert not asserts("scenes/count", "2") and not asserts("scenes/position", "left")
