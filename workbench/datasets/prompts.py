"""Seeded prompt sets with known answers: repeated random words (induction), indirect-object identification
(IOI) templates, and key-value retrieval with answerable and unanswerable questions.

    python -m workbench.datasets.prompts --out data/prompts     # rewrites induction/ioi/kv_retrieval .jsonl

The natural-text passages (data/prompts/natural.jsonl) are written by hand and not generated here.
Each record carries its ground truth (the expected continuation, the period, or whether the context answers).
"""

from __future__ import annotations

import json
import random
from pathlib import Path

WORDS = ["apple", "river", "stone", "cloud", "paper", "tiger", "window", "garden", "silver", "music", "yellow", "winter", "bottle", "candle", "forest", "pencil", "rocket", "orange", "castle", "dragon", "mirror", "planet", "butter", "jacket", "monkey", "pocket", "rabbit", "saddle", "violin", "wallet", "anchor", "basket", "cactus", "donkey", "engine", "falcon", "ginger", "helmet", "island", "jungle", "kettle", "ladder", "magnet", "napkin", "oyster", "parrot", "quartz", "ribbon", "sponge", "tunnel"]

NAMES = ["Mary", "John", "Tom", "James", "Dan", "Sid", "Martin", "Amy", "Lisa", "Kate", "Paul", "Anna", "Mark", "Sarah", "David", "Emma", "Jack", "Laura", "Peter", "Rose"]
PLACES = ["store", "garden", "restaurant", "school", "hospital", "office", "station", "park", "library", "market"]
OBJECTS = ["drink", "ring", "kiss", "bone", "basketball", "computer", "necklace", "apple", "snack", "book"]
IOI_TEMPLATES = (
    "When {A} and {B} went to the {PLACE}, {S} gave a {OBJECT} to",
    "When {A} and {B} got a {OBJECT} at the {PLACE}, {S} decided to give it to",
    "Then, {A} and {B} went to the {PLACE}. {S} gave a {OBJECT} to",
    "After {A} and {B} went to the {PLACE}, {S} gave a {OBJECT} to",
    "While {A} and {B} were working at the {PLACE}, {S} gave a {OBJECT} to",
    "Friends {A} and {B} found a {OBJECT} at the {PLACE}. {S} gave it to",
    "Then, {A} and {B} had a long argument, and afterwards {S} said to",
    "The {PLACE} was busy when {A} and {B} arrived. {S} handed the {OBJECT} to",
)

KEY_TYPES = ("locker code", "room number", "phone extension", "ticket number", "badge number")
KV_NAMES = ["Anna", "Ben", "Carl", "Dora", "Eric", "Fiona", "George", "Hannah", "Ivan", "Julia", "Kevin", "Lena", "Omar", "Priya", "Quinn", "Rita", "Sam", "Tara", "Umar", "Vera", "Will", "Xena", "Yusuf", "Zoe"]


def induction_prompts(n: int = 50, seed: int = 0) -> list[dict]:
    """Random common words, repeated: an induction head predicts the second copy from the first."""
    rng = random.Random(f"induction:{seed}")
    out = []
    for index in range(n):
        period = rng.choice((8, 12, 16, 20))
        words = rng.sample(WORDS, period)
        repeats = 2 if index % 5 else 3
        out.append({"name": f"induction-{index:03d}", "prompt": " ".join(words * repeats), "words": words,
                    "period": period, "repeats": repeats,
                    "truth": "word k of every copy after the first equals word k of the first copy"})
    return out


def ioi_prompts(n: int = 200, seed: int = 0) -> list[dict]:
    """IOI (Wang et al. 2022): the indirect object IO is the correct completion, the subject S the distractor."""
    rng = random.Random(f"ioi:{seed}")
    out = []
    for index in range(n):
        template = IOI_TEMPLATES[index % len(IOI_TEMPLATES)]
        io, s = rng.sample(NAMES, 2)
        order = "ABBA" if rng.random() < 0.5 else "BABA"
        a, b = (io, s) if order == "ABBA" else (s, io)
        prompt = template.format(A=a, B=b, S=s, PLACE=rng.choice(PLACES), OBJECT=rng.choice(OBJECTS))
        out.append({"name": f"ioi-{index:03d}", "prompt": prompt, "template": IOI_TEMPLATES.index(template),
                    "order": order, "io": io, "s": s, "answer": " " + io, "distractor": " " + s})
    return out


def kv_prompts(n: int = 200, seed: int = 0) -> list[dict]:
    """Key-value records then a question; half ask about a person absent from the records (unanswerable)."""
    rng = random.Random(f"kv:{seed}")
    out = []
    for index in range(n):
        key_type = rng.choice(KEY_TYPES)
        people = rng.sample(KV_NAMES, rng.randint(3, 7) + 1)
        asked_absent, listed = people[0], people[1:]
        values = {name: str(rng.randint(1000, 9999)) for name in listed}
        lines = "\n".join(f"{name}'s {key_type} is {values[name]}." for name in listed)
        answerable = index % 2 == 0
        asked = rng.choice(listed) if answerable else asked_absent
        prompt = (f"Here are some records.\n{lines}\nQuestion: What is {asked}'s {key_type}? If the records do not "
                  f"say, answer \"unknown\".\nAnswer:")
        out.append({"name": f"kv-{index:03d}", "prompt": prompt, "key_type": key_type, "asked": asked,
                    "records": values, "answerable": answerable,
                    "answer": values[asked] if answerable else "unknown"})
    return out


GENERATED = {"induction.jsonl": induction_prompts, "ioi.jsonl": ioi_prompts, "kv_retrieval.jsonl": kv_prompts}


def write(out: str | Path = "data/prompts") -> dict[str, int]:
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    counts = {}
    for name, make in GENERATED.items():
        records = make()
        (out / name).write_text("".join(json.dumps(r) + "\n" for r in records))
        counts[name] = len(records)
    return counts


def main(argv=None) -> int:
    import argparse

    parser = argparse.ArgumentParser(description="write the generated prompt sets")
    parser.add_argument("--out", default="data/prompts")
    print(write(parser.parse_args(argv).out))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
