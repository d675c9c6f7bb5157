"""Training and probe examples for `smol-llava`: scene questions with full-sentence answers that restate the
subject ("Yes, there is a red circle."), built from the scene truth of workbench.datasets.scenes.

Stage 1 (alignment) uses captions; stage 2 (instruction tuning) mixes every question type of the scenes set,
questions about objects that are not in the image (unanswerable: the right answer says so), and, through the
training prior of the scene sampler (typical colours, a red circle with a blue square), questions whose answer
conflicts with what the prior suggests.
"""

from __future__ import annotations

import random
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
if str(HERE.parents[2]) not in sys.path:
    sys.path.insert(0, str(HERE.parents[2]))

from workbench.datasets import scenes
from workbench.datasets.scene_answers import sentence_answer

CAPTION_PROMPTS = ("Describe the image.", "What is in the image?", "Describe the image briefly.",
                   "What does this picture show?")
UNANSWERABLE_SHARE = 0.1


def caption_sentence(scene) -> str:
    return "The image shows " + scenes.caption(scene)


def sentence(qa: scenes.QA) -> str:
    """The full-sentence answer to one scenes question: it restates the subject, then gives the answer."""
    return sentence_answer(qa)


def unanswerable(scene, rng: random.Random) -> tuple[str, str]:
    """A question that presupposes an object the scene lacks, and the answer that refuses the presupposition."""
    missing = [shape for shape in scenes.SHAPES if shape not in scene.shapes()]
    if missing and rng.random() < 0.5:
        shape = rng.choice(missing)
        return f"What colour is the {shape}?", f"There is no {shape} in the image."
    missing_colours = [c for c in scenes.COLOURS if all(o.colour != c for o in scene.objects)]
    colour = rng.choice(missing_colours)
    return f"What shape is the {colour} object?", f"There is no {colour} object in the image."


def stage1_example(scene, rng: random.Random) -> tuple[str, str]:
    return rng.choice(CAPTION_PROMPTS), caption_sentence(scene)


def stage2_example(scene, rng: random.Random) -> tuple[str, str]:
    if rng.random() < UNANSWERABLE_SHARE:
        return unanswerable(scene, rng)
    qa = scenes.sample_question(scene, rng)
    return qa.question, sentence(qa)


def parse_presence(text: str) -> str | None:
    """'yes' / 'no' from a generated presence answer (its first word), None if it is neither."""
    said = scenes.stated_answer("presence", text)
    return said if said in ("yes", "no") else None


def parse_refusal(text: str) -> bool:
    """Whether a generated answer says the asked-about object is not there."""
    return "there is no" in text.lower()
