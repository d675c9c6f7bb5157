"""Synthetic Pillow scenes with question/answer pairs whose truth is known, plus a controlled language prior.

A scene is 1-3 coloured shapes on a plain or noisy background (48 x 48 px, a 6 x 6 grid of 8 px patches).
The training distribution carries a language prior that the held-out set contradicts on purpose:

- attribute prior: every shape has a typical colour (TYPICAL_COLOUR; circles are red, ...), used with
  probability `typical` (0.9 in training);
- co-occurrence prior: a red circle comes with a blue square with probability `cooccur` (0.9 in training).

At test time the prior answer of a question is what a reader who recognises shapes but trusts the prior for
colours and companions would say (`prior_answer`); a question whose truth differs from it is
prior-conflicting, and answering it with the prior answer is a hallucination.
Everything is seeded: `sample_scene(random.Random(seed))` and `render(scene)` give identical bytes each run.
"""

from __future__ import annotations

import random
import re
from dataclasses import asdict, dataclass, field

IMAGE_SIZE = 48
PATCH_SIZE = 8
SHAPES = ("circle", "square", "triangle", "diamond")
COLOURS = {"red": (220, 40, 40), "green": (40, 180, 60), "blue": (50, 80, 230), "yellow": (235, 210, 40),
           "purple": (150, 60, 190)}
TYPICAL_COLOUR = {"circle": "red", "square": "blue", "triangle": "green", "diamond": "yellow"}
TRIGGER = ("red", "circle")  # a red circle ...
PARTNER = ("blue", "square")  # ... usually comes with a blue square
COUNT_WORDS = {1: "1", 2: "2", 3: "3"}


@dataclass(frozen=True)
class Prior:
    """How strongly the scene distribution follows the prior (probabilities)."""

    typical: float = 0.9  # an object takes its shape's typical colour
    cooccur: float = 0.9  # a scene with the trigger also holds the partner
    noisy: float = 0.5  # background is noise rather than plain
    max_objects: int = 3
    trigger: float = 0.0  # extra chance that a scene starts with the trigger object (oversamples co-occurrence probes)


TRAIN_PRIOR = Prior()
# The held-out set breaks the prior half of the time, so prior-conflicting questions are plentiful.
HELDOUT_PRIOR = Prior(typical=0.5, cooccur=0.3, trigger=0.3)


@dataclass(frozen=True)
class Obj:
    shape: str
    colour: str
    cx: int  # centre, pixels
    cy: int
    size: int  # bounding-box side, pixels

    @property
    def name(self) -> str:
        return f"{self.colour} {self.shape}"

    @property
    def box(self) -> tuple[int, int, int, int]:
        half = self.size // 2
        return (self.cx - half, self.cy - half, self.cx - half + self.size, self.cy - half + self.size)

    def patches(self) -> list[list[int]]:
        """[row, col] of the 8 px patches the bounding box touches."""
        x0, y0, x1, y1 = self.box
        rows = range(max(y0, 0) // PATCH_SIZE, (min(y1, IMAGE_SIZE) - 1) // PATCH_SIZE + 1)
        cols = range(max(x0, 0) // PATCH_SIZE, (min(x1, IMAGE_SIZE) - 1) // PATCH_SIZE + 1)
        return [[r, c] for r in rows for c in cols]


@dataclass(frozen=True)
class Scene:
    objects: tuple[Obj, ...]
    background: int  # grey level
    noise: int  # amplitude of uniform pixel noise (0 = plain)
    seed: int  # seeds the noise and colour jitter of the rendering

    def has(self, colour: str, shape: str) -> bool:
        return any(o.colour == colour and o.shape == shape for o in self.objects)

    def shapes(self) -> set[str]:
        return {o.shape for o in self.objects}

    def to_json(self) -> dict:
        data = asdict(self)
        data["objects"] = [dict(asdict(o), box=list(o.box), patches=o.patches()) for o in self.objects]
        data["patch_objects"] = patch_labels(self)
        return data

    @classmethod
    def from_json(cls, data: dict) -> Scene:
        objects = tuple(Obj(o["shape"], o["colour"], o["cx"], o["cy"], o["size"]) for o in data["objects"])
        return cls(objects, data["background"], data["noise"], data["seed"])


# -- sampling ------------------------------------------------------------------------------------------

def _colour_for(shape: str, rng: random.Random, prior: Prior) -> str:
    if rng.random() < prior.typical:
        return TYPICAL_COLOUR[shape]
    return rng.choice([c for c in COLOURS if c != TYPICAL_COLOUR[shape]])


def _place(kinds: list[tuple[str, str]], rng: random.Random) -> tuple[Obj, ...] | None:
    placed: list[Obj] = []
    for colour, shape in kinds:
        for _ in range(50):
            size = rng.randint(11, 17)
            half = size // 2
            cx, cy = rng.randint(half + 1, IMAGE_SIZE - size + half - 1), rng.randint(half + 1, IMAGE_SIZE - size + half - 1)
            candidate = Obj(shape, colour, cx, cy, size)
            if all(_apart(candidate, other) for other in placed):
                placed.append(candidate)
                break
        else:
            return None
    return tuple(placed)


def _apart(a: Obj, b: Obj, gap: int = 2) -> bool:
    ax0, ay0, ax1, ay1 = a.box
    bx0, by0, bx1, by1 = b.box
    return ax1 + gap <= bx0 or bx1 + gap <= ax0 or ay1 + gap <= by0 or by1 + gap <= ay0


def sample_scene(rng: random.Random, prior: Prior = TRAIN_PRIOR) -> Scene:
    """A random scene: 1..max_objects distinct (colour, shape) objects that do not overlap."""
    while True:
        n = rng.randint(1, prior.max_objects)
        kinds: list[tuple[str, str]] = [TRIGGER] if rng.random() < prior.trigger else []
        while len(kinds) < n:
            shape = rng.choice(SHAPES)
            kind = (_colour_for(shape, rng, prior), shape)
            if kind not in kinds:
                kinds.append(kind)
        if TRIGGER in kinds and PARTNER not in kinds and rng.random() < prior.cooccur:
            if len(kinds) == prior.max_objects:
                kinds[next(k for k in range(len(kinds)) if kinds[k] != TRIGGER)] = PARTNER
            else:
                kinds.append(PARTNER)
        rng.shuffle(kinds)
        objects = _place(kinds, rng)
        if objects is not None:
            noisy = rng.random() < prior.noisy
            background = rng.choice([rng.randint(15, 70), rng.randint(160, 230)])
            return Scene(objects, background, rng.randint(20, 60) if noisy else 0, rng.randrange(2**31))


def render(scene: Scene):
    """The scene as a 48 x 48 RGB PIL image (drawn at 4x and downsampled, so edges are anti-aliased)."""
    from PIL import Image, ImageDraw

    scale = 4
    big = Image.new("RGB", (IMAGE_SIZE * scale, IMAGE_SIZE * scale), (scene.background,) * 3)
    draw = ImageDraw.Draw(big)
    rng = random.Random(scene.seed)
    for obj in scene.objects:
        rgb = tuple(max(0, min(255, v + rng.randint(-20, 20))) for v in COLOURS[obj.colour])
        x0, y0, x1, y1 = (v * scale for v in obj.box)
        if obj.shape == "circle":
            draw.ellipse((x0, y0, x1 - 1, y1 - 1), fill=rgb)
        elif obj.shape == "square":
            draw.rectangle((x0, y0, x1 - 1, y1 - 1), fill=rgb)
        elif obj.shape == "triangle":
            draw.polygon([((x0 + x1) / 2, y0), (x1 - 1, y1 - 1), (x0, y1 - 1)], fill=rgb)
        else:
            cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
            draw.polygon([(cx, y0), (x1 - 1, cy), (cx, y1 - 1), (x0, cy)], fill=rgb)
    image = big.resize((IMAGE_SIZE, IMAGE_SIZE), Image.Resampling.BOX)
    if scene.noise:
        noise_rng = random.Random(scene.seed ^ 0x5EED)
        data = bytes(max(0, min(255, v + noise_rng.randint(-scene.noise, scene.noise))) for v in image.tobytes())
        image = Image.frombytes("RGB", image.size, data)
    return image


def patch_labels(scene: Scene, min_pixels: int = 8) -> list[int]:
    """Per 8 px patch (row-major, 36 of them) the index of the object covering most of it, -1 for background.

    Computed from the filled shapes (not the bounding boxes); an object must cover >= min_pixels of 64.
    """
    from PIL import Image, ImageDraw

    mask = Image.new("L", (IMAGE_SIZE, IMAGE_SIZE), 0)
    draw = ImageDraw.Draw(mask)
    for index, obj in enumerate(scene.objects):
        x0, y0, x1, y1 = obj.box
        value = index + 1
        if obj.shape == "circle":
            draw.ellipse((x0, y0, x1 - 1, y1 - 1), fill=value)
        elif obj.shape == "square":
            draw.rectangle((x0, y0, x1 - 1, y1 - 1), fill=value)
        elif obj.shape == "triangle":
            draw.polygon([((x0 + x1 - 1) / 2, y0), (x1 - 1, y1 - 1), (x0, y1 - 1)], fill=value)
        else:
            cx, cy = (x0 + x1 - 1) / 2, (y0 + y1 - 1) / 2
            draw.polygon([(cx, y0), (x1 - 1, cy), (cx, y1 - 1), (x0, cy)], fill=value)
    import numpy as np

    grid = IMAGE_SIZE // PATCH_SIZE
    patches = np.asarray(mask).reshape(grid, PATCH_SIZE, grid, PATCH_SIZE).transpose(0, 2, 1, 3).reshape(grid * grid, -1)
    counts = np.stack([(patches == index + 1).sum(1) for index in range(len(scene.objects))], 1)
    best = counts.argmax(1)
    return [int(b) if counts[k, b] >= min_pixels else -1 for k, b in enumerate(best)]


# -- questions -----------------------------------------------------------------------------------------

@dataclass
class QA:
    """One question about a scene with its true answer and the answer the language prior suggests."""

    type: str  # presence | colour | shape | count | position | caption
    question: str
    answer: str
    prior_answer: str | None = None  # None where the prior has no opinion
    subtype: str = ""
    target: list = field(default_factory=list)  # the objects the question is about, as [colour, shape]

    @property
    def conflicts(self) -> bool:
        return self.prior_answer is not None and self.prior_answer != self.answer

    def to_json(self) -> dict:
        return dict(asdict(self), conflicts=self.conflicts)


def presence_prior(scene: Scene, colour: str, shape: str) -> str:
    """The prior's answer: yes when a shape is seen and the colour is its typical one, or the partner is implied."""
    if colour == TYPICAL_COLOUR[shape] and shape in scene.shapes():
        return "yes"
    if (colour, shape) == PARTNER and scene.has(*TRIGGER):
        return "yes"
    return "no"


def presence(scene: Scene, colour: str, shape: str) -> QA:
    truth = "yes" if scene.has(colour, shape) else "no"
    prior = presence_prior(scene, colour, shape)
    if truth == "yes":
        subtype = "present-typical" if prior == "yes" else "present-atypical"
    elif prior == "yes":
        swapped = colour == TYPICAL_COLOUR[shape] and shape in scene.shapes()
        subtype = "absent-attribute-swap" if swapped else "absent-cooccurrence"
    else:
        subtype = "absent"
    return QA("presence", f"Is there a {colour} {shape}?", truth, prior, subtype, [[colour, shape]])


def colour_question(scene: Scene, obj: Obj) -> QA:
    prior = TYPICAL_COLOUR[obj.shape]
    return QA("colour", f"What colour is the {obj.shape}?", obj.colour, prior,
              "typical" if prior == obj.colour else "atypical", [[obj.colour, obj.shape]])


def shape_question(scene: Scene, obj: Obj) -> QA:
    typical_shape = {c: s for s, c in TYPICAL_COLOUR.items()}.get(obj.colour)
    return QA("shape", f"What shape is the {obj.colour} object?", obj.shape, typical_shape,
              "none" if typical_shape is None else ("typical" if typical_shape == obj.shape else "atypical"),
              [[obj.colour, obj.shape]])


def count_question(scene: Scene) -> QA:
    return QA("count", "How many shapes are there?", COUNT_WORDS[len(scene.objects)], None, "",
              [[o.colour, o.shape] for o in scene.objects])


def relation(a: Obj, b: Obj) -> str | None:
    """Where a is relative to b along the dominant axis; None when the axes are too close to call."""
    dx, dy = a.cx - b.cx, a.cy - b.cy
    if abs(abs(dx) - abs(dy)) < 4:
        return None
    if abs(dx) > abs(dy):
        return "left" if dx < 0 else "right"
    return "above" if dy < 0 else "below"


def position_question(scene: Scene, a: Obj, b: Obj) -> QA | None:
    answer = relation(a, b)
    if answer is None:
        return None
    return QA("position", f"Where is the {a.name} relative to the {b.name}?", answer, None, "",
              [[a.colour, a.shape], [b.colour, b.shape]])


def caption(scene: Scene) -> str:
    """Objects from left to right: 'a red circle, a blue square and a green triangle.'"""
    names = [f"a {o.name}" for o in sorted(scene.objects, key=lambda o: (o.cx, o.cy))]
    text = names[0] if len(names) == 1 else ", ".join(names[:-1]) + " and " + names[-1]
    return text + "."


def caption_question(scene: Scene) -> QA:
    return QA("caption", "Describe the image.", caption(scene), None, "",
              [[o.colour, o.shape] for o in sorted(scene.objects, key=lambda o: (o.cx, o.cy))])


def caption_objects(text: str) -> list[tuple[str, str]]:
    """The (colour, shape) objects a caption mentions (for CHAIR-style scoring of generated captions)."""
    words = text.replace(",", " ").replace(".", " ").split()
    return [(words[i], words[i + 1]) for i in range(len(words) - 1) if words[i] in COLOURS and words[i + 1] in SHAPES]


def _unique(scene: Scene, attribute: str) -> list[Obj]:
    values = [getattr(o, attribute) for o in scene.objects]
    return [o for o in scene.objects if values.count(getattr(o, attribute)) == 1]


TRAIN_MIX = {"presence": 0.46, "colour": 0.12, "shape": 0.1, "count": 0.08, "position": 0.12, "caption": 0.12}


def sample_question(scene: Scene, rng: random.Random, mix: dict[str, float] = TRAIN_MIX) -> QA:
    """One training question about `scene`; presence questions are yes half of the time."""
    while True:
        kind = rng.choices(list(mix), weights=list(mix.values()))[0]
        qa = None
        if kind == "presence":
            if rng.random() < 0.5:
                obj = rng.choice(scene.objects)
                qa = presence(scene, obj.colour, obj.shape)
            else:
                absent = [(c, s) for c in COLOURS for s in SHAPES if not scene.has(c, s)]
                qa = presence(scene, *rng.choice(absent))
        elif kind == "colour" and _unique(scene, "shape"):
            qa = colour_question(scene, rng.choice(_unique(scene, "shape")))
        elif kind == "shape" and _unique(scene, "colour"):
            qa = shape_question(scene, rng.choice(_unique(scene, "colour")))
        elif kind == "count":
            qa = count_question(scene)
        elif kind == "position" and len(scene.objects) > 1:
            a, b = rng.sample(list(scene.objects), 2)
            qa = position_question(scene, a, b)
        elif kind == "caption":
            qa = caption_question(scene)
        if qa is not None:
            return qa


def heldout_questions(scene: Scene, rng: random.Random) -> list[QA]:
    """Every kind of question for one held-out scene, with the prior-conflicting presence probes included."""
    out: list[QA] = []
    for obj in scene.objects:
        out.append(presence(scene, obj.colour, obj.shape))
    for shape in sorted(scene.shapes()):  # the typical-colour probe: hallucinated when the shape's colour differs
        out.append(presence(scene, TYPICAL_COLOUR[shape], shape))
    if scene.has(*TRIGGER):
        out.append(presence(scene, *PARTNER))
    absent = [(c, s) for c in COLOURS for s in SHAPES
              if not scene.has(c, s) and presence_prior(scene, c, s) == "no"]
    for colour, shape in rng.sample(absent, 2):
        out.append(presence(scene, colour, shape))
    out.extend(colour_question(scene, o) for o in _unique(scene, "shape"))
    out.extend(shape_question(scene, o) for o in _unique(scene, "colour"))
    out.append(count_question(scene))
    if len(scene.objects) > 1:
        position = position_question(scene, *rng.sample(list(scene.objects), 2))
        if position is not None:
            out.append(position)
    out.append(caption_question(scene))
    unique: dict[str, QA] = {}
    for qa in out:
        unique.setdefault(qa.question, qa)
    return list(unique.values())


def normalise(text: str) -> str:
    """A generated answer reduced to what is scored: stripped, lower case, no trailing end-of-turn text."""
    return text.split("<|im_end|>")[0].strip().lower()


RELATIONS = ("left", "right", "above", "below")

# The words a short answer of each type is made of: a full-sentence answer states exactly one of them after
# restating its subject ("The circle is red.", "There are 2 shapes.").
ANSWER_WORDS = {"presence": ("yes", "no"), "colour": tuple(COLOURS), "shape": SHAPES,
                "count": tuple(COUNT_WORDS.values()), "position": RELATIONS}


def stated_answer(question_type: str, generated: str) -> str:
    """The short answer a generation states, whether it is the short answer itself ("red") or a sentence that
    restates the subject first, as `smol-llava` answers ("The circle is red." -> "red"; "No, there is no red
    circle." -> "no"; "The red circle is to the left of the blue square." -> "left"). The answer word is the
    first word for presence (the rest of the sentence repeats the subject), the first relation word for
    position, the last answer word otherwise (the subject comes first and may itself name a colour or shape).
    A generation that states none is returned normalised, so it matches no answer."""
    span = stated_answer_span(question_type, generated)
    if span is None:
        return normalise(generated).rstrip(".")
    return generated[span[0]:span[1]].lower()


def stated_answer_span(question_type: str, generated: str) -> tuple[int, int] | None:
    """Where in `generated` (character offsets, end exclusive) the answer word `stated_answer` reads is, or None
    when the generation states none; VHD scores the tokens of this span (for a short answer, the first token)."""
    head = generated.split("<|im_end|>")[0].translate(_ASCII_LOWER)  # lower case that keeps the offsets
    words = list(re.finditer(r"[a-z0-9]+", head))
    vocabulary = ANSWER_WORDS.get(question_type, ())
    stated = [word for word in words if word.group() in vocabulary]
    if not stated or (question_type == "presence" and words[0].group() not in vocabulary):
        return None
    word = stated[0] if question_type in ("presence", "position") else stated[-1]
    return word.span()


_ASCII_LOWER = str.maketrans("ABCDEFGHIJKLMNOPQRSTUVWXYZ", "abcdefghijklmnopqrstuvwxyz")


def is_correct(qa: dict | QA, generated: str) -> bool:
    """The stated answer must be the true one (short or full-sentence answers, see `stated_answer`); captions
    must name exactly the scene's objects (order-free)."""
    qa = qa.to_json() if isinstance(qa, QA) else qa
    answer = normalise(generated)
    if qa["type"] == "caption":
        return sorted(caption_objects(answer)) == sorted(caption_objects(qa["answer"]))
    return stated_answer(qa["type"], generated) == qa["answer"]


# -- the shipped held-out set ----------------------------------------------------------------------------

def heldout_scene(index: int, seed: int = 0) -> Scene:
    return sample_scene(random.Random(f"heldout:{seed}:{index}"), HELDOUT_PRIOR)


def write_heldout(out, n_scenes: int = 400, seed: int = 0) -> dict:
    """Render the held-out scenes and their questions into `out` (images/, scenes.jsonl, questions.jsonl)."""
    import json
    from pathlib import Path

    out = Path(out)
    (out / "images").mkdir(parents=True, exist_ok=True)
    scene_lines, question_lines = [], []
    for index in range(n_scenes):
        scene = heldout_scene(index, seed)
        name = f"scene_{index:04d}"
        image = f"images/{name}.png"
        render(scene).save(out / image, optimize=True)
        scene_lines.append(json.dumps({"id": name, "image": image, **scene.to_json()}))
        rng = random.Random(f"heldout-questions:{seed}:{index}")
        for qa in heldout_questions(scene, rng):
            question_lines.append(json.dumps({"scene": name, "image": image, **qa.to_json()}))
    (out / "scenes.jsonl").write_text("\n".join(scene_lines) + "\n")
    (out / "questions.jsonl").write_text("\n".join(question_lines) + "\n")
    return {"scenes": n_scenes, "questions": len(question_lines)}


def main(argv=None) -> int:
    import argparse

    parser = argparse.ArgumentParser(description="write the held-out scene set with ground truth")
    parser.add_argument("--out", default="data/scenes")
    parser.add_argument("--scenes", type=int, default=400)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    print(write_heldout(args.out, args.scenes, args.seed))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
