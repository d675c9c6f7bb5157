"""Measure `smol-llava` on the shipped held-out scenes (data/scenes): presence accuracy, hallucination rates.

    python data/models/smol_llava/evaluate.py                           # the shipped files, writes eval.json here
    python data/models/smol_llava/evaluate.py --dir OUT --limit 100     # trained files in OUT, eval.json there

The model is composed from the packaged bases plus the trained files in --dir (what the registry assembles),
prompts rendered by its chat template as `workbench.trace` renders them, answers decoded greedily. Scored:
- presence questions (held-out, prior broken on purpose): the answer's first word (yes / no) against the truth,
  by subtype; the hallucination rate of a subtype is the share of "yes" to an absent object;
- colour questions: the sentence names the true colour;
- unanswerable questions built from the held-out scenes ("What colour is the <absent shape>?"): the answer
  must say there is none; the hallucination rate is the share that names a colour instead.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import time
from collections import defaultdict
from pathlib import Path

HERE = Path(__file__).resolve().parent
if str(HERE.parents[2]) not in sys.path:
    sys.path.insert(0, str(HERE.parents[2]))

from workbench.datasets import scenes
from workbench.datasets.scene_questions import read_questions

DATA = HERE.parents[1] / "scenes"


def local_module(name: str):
    import importlib.util

    spec = importlib.util.spec_from_file_location(f"smol_llava_{name}", HERE / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def probe_questions(limit: int, seed: int = 0) -> list[dict]:
    """Held-out presence and colour questions (a seeded sample of `limit`) plus one unanswerable question per
    sampled scene, each with the truth needed to score it."""
    rows = [r for r in read_questions(DATA) if r["type"] in ("presence", "colour")]
    rng = random.Random(f"smol-llava-eval:{seed}")
    sampled = rng.sample(rows, min(limit, len(rows)))
    examples = local_module("examples")
    for name in sorted({r["scene"] for r in sampled})[: max(1, limit // 4)]:
        scene = scenes.heldout_scene(int(name.split("_")[1]))
        question, answer = examples.unanswerable(scene, rng)
        sampled.append({"scene": name, "image": f"images/{name}.png", "type": "unanswerable", "question": question,
                        "answer": answer, "subtype": "absent-object"})
    return sampled


def answer_all(model, processor, questions: list[dict], max_new_tokens: int = 16) -> list[str]:
    import torch
    from PIL import Image

    answers = []
    for qa in questions:
        messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": qa["question"]}]}]
        text = processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        inputs = processor(text=text, images=Image.open(DATA / qa["image"]).convert("RGB"), return_tensors="pt")
        with torch.no_grad():
            out = model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False)
        answers.append(processor.tokenizer.decode(out[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True))
    return answers


def score(questions: list[dict], answers: list[str]) -> dict:
    examples = local_module("examples")
    by = defaultdict(lambda: [0, 0])  # subtype -> [correct, total]
    yes_to_absent = defaultdict(lambda: [0, 0])
    for qa, text in zip(questions, answers):
        if qa["type"] in ("presence", "colour"):  # the answer word the sentence states, as every scene run scores
            key = f"{qa['type']}/{qa['subtype']}"
            by[key][0] += scenes.is_correct(qa, text)
            if qa["type"] == "presence" and qa["answer"] == "no":
                yes_to_absent[qa["subtype"]][0] += scenes.stated_answer("presence", text) == "yes"
                yes_to_absent[qa["subtype"]][1] += 1
        else:
            key = "unanswerable"
            by[key][0] += examples.parse_refusal(text)
        by[key][1] += 1
    presence = [v for k, v in by.items() if k.startswith("presence/")]
    conflicting = [(q, t) for q, t in zip(questions, answers) if q["type"] == "presence" and q.get("conflicts")]
    conflict_correct = sum(scenes.is_correct(q, t) for q, t in conflicting)
    return {
        "presence_accuracy": round(sum(c for c, _ in presence) / max(1, sum(n for _, n in presence)), 4),
        "prior_conflicting_presence_accuracy": round(
            conflict_correct / max(1, len(conflicting)), 4),
        "accuracy_by_subtype": {k: {"accuracy": round(c / n, 4), "n": n} for k, (c, n) in sorted(by.items())},
        "hallucination_rate": {k: {"rate": round(c / n, 4), "n": n} for k, (c, n) in sorted(yes_to_absent.items())},
        "unanswerable_hallucination_rate": round(1 - by["unanswerable"][0] / max(1, by["unanswerable"][1]), 4),
    }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dir", type=Path, default=HERE, help="folder with the trained files (default: here)")
    parser.add_argument("--limit", type=int, default=600, help="held-out presence + colour questions to sample")
    parser.add_argument("--out", type=Path, default=None, help="eval.json path (default: DIR/eval.json)")
    args = parser.parse_args(argv)
    import torch

    from workbench.errors import WeightsMissingError
    from workbench.models import packaged, smol_llava

    if not smol_llava.trained_files_present(args.dir):
        raise SystemExit(f"error: {WeightsMissingError(smol_llava.not_trained_message(args.dir))}")
    questions = probe_questions(args.limit)
    model, processor = smol_llava.compose_from_dirs(packaged.dinov2_dir(), packaged.smollm2_dir())
    smol_llava.load_trained(model, args.dir)
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "2")))
    start = time.time()
    answers = answer_all(model.eval(), processor, questions)
    result = {"questions": len(questions), "seconds": round(time.time() - start, 1),
              "trained_files_sha256": smol_llava.trained_digest(args.dir), **score(questions, answers),
              "examples": [{"question": q["question"], "truth": q["answer"], "answer": a}
                           for q, a in list(zip(questions, answers))[:12]]}
    (args.out or args.dir / "eval.json").write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps({k: v for k, v in result.items() if k not in ("examples", "accuracy_by_subtype")}))
    return 0


if __name__ == "__main__":
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    raise SystemExit(main())
