"""Measure `llava-scenes` on the shipped held-out scenes: accuracy by question type and hallucination rates.

    python data/models/llava_scenes/evaluate.py                       # all 400 scenes, writes eval.json here
    python data/models/llava_scenes/evaluate.py --model DIR --limit 500 --out /tmp/eval.json

Greedy decoding through the model loaded by the workbench (`workbench.load_model`), prompts rendered with
the processor's chat template exactly as `workbench.trace` renders them. Questions are batched by prompt
length, so no padding is involved. Scoring and the prior of each question come from the scene truth in
data/scenes/questions.jsonl (see workbench/datasets/scenes.py).
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

DATA = HERE.parents[1] / "scenes"
HALLUCINATION_SUBTYPES = ("absent-attribute-swap", "absent-cooccurrence")


def load_questions(data: Path = DATA, limit: int | None = None, seed: int = 0) -> list[dict]:
    questions = [json.loads(line) for line in (data / "questions.jsonl").read_text().splitlines() if line]
    if limit is not None and limit < len(questions):
        questions = random.Random(seed).sample(questions, limit)
    return questions


def answer(loaded, questions: list[dict], data: Path = DATA, batch: int = 64, max_new_tokens: int = 20) -> list[str]:
    """Greedy answers of `loaded` (a workbench LoadedModel) to `questions`, in order."""
    import torch
    from PIL import Image

    processor, tokenizer = loaded.processor, loaded.processor.tokenizer
    encoded = []
    for qa in questions:
        messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": qa["question"]}]}]
        text = processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        image = Image.open(data / qa["image"]).convert("RGB")
        encoded.append(processor(text=text, images=image, return_tensors="pt"))
    by_length = defaultdict(list)
    for index, item in enumerate(encoded):
        by_length[item["input_ids"].shape[1]].append(index)
    outputs = [""] * len(questions)
    with torch.inference_mode():
        for length, indices in sorted(by_length.items()):
            for start in range(0, len(indices), batch):
                chunk = indices[start:start + batch]
                ids = torch.cat([encoded[i]["input_ids"] for i in chunk])
                pixels = torch.cat([encoded[i]["pixel_values"] for i in chunk])
                generated = loaded.model.generate(
                    input_ids=ids, attention_mask=torch.ones_like(ids), pixel_values=pixels, do_sample=False,
                    max_new_tokens=max_new_tokens, eos_token_id=tokenizer.eos_token_id,
                    pad_token_id=tokenizer.pad_token_id)
                for row, i in enumerate(chunk):
                    outputs[i] = tokenizer.decode(generated[row, length:], skip_special_tokens=False)
    return [scenes.normalise(text.replace("<|pad|>", "")) for text in outputs]


def _rate(hits: list[bool]) -> dict:
    return {"n": len(hits), "rate": round(sum(hits) / len(hits), 4) if hits else None}


def summarise(questions: list[dict], answers: list[str]) -> dict:
    """Accuracy by type (and by agreement with the prior), hallucination rates, caption CHAIR scores."""
    correct = [scenes.is_correct(qa, a) for qa, a in zip(questions, answers)]
    groups: dict[str, list[bool]] = defaultdict(list)
    for qa, ok in zip(questions, correct):
        groups[qa["type"]].append(ok)
        groups[f"{qa['type']}/{'conflicting' if qa['conflicts'] else 'agreeing'}"].append(ok)
        groups[f"{qa['type']}/{qa['subtype'] or 'all'}"].append(ok)
    result = {"accuracy": {key: _rate(value) for key, value in sorted(groups.items())},
              "overall_accuracy": _rate(correct)}
    presence_h = [a == "yes" for qa, a in zip(questions, answers)
                  if qa["type"] == "presence" and qa["subtype"] in HALLUCINATION_SUBTYPES]
    by_subtype = {sub: _rate([a == "yes" for qa, a in zip(questions, answers)
                              if qa["type"] == "presence" and qa["subtype"] == sub]) for sub in HALLUCINATION_SUBTYPES}
    prior_answers = {kind: _rate([a == qa["prior_answer"] for qa, a in zip(questions, answers)
                                  if qa["type"] == kind and qa["conflicts"]]) for kind in ("presence", "colour", "shape")}
    mentioned = hallucinated = captions_h = n_captions = 0
    for qa, a in zip(questions, answers):
        if qa["type"] != "caption":
            continue
        truth = {tuple(t) for t in qa["target"]}
        objects = scenes.caption_objects(a)
        bad = [o for o in objects if o not in truth]
        mentioned, hallucinated = mentioned + len(objects), hallucinated + len(bad)
        n_captions, captions_h = n_captions + 1, captions_h + bool(bad)
    result["hallucination"] = {
        "presence_prior_yes_truth_no": _rate(presence_h), "presence_by_subtype": by_subtype,
        "prior_answer_on_conflicting": prior_answers,
        "caption_chair_i": round(hallucinated / mentioned, 4) if mentioned else None,
        "caption_chair_s": round(captions_h / n_captions, 4) if n_captions else None,
    }
    return result


def markdown(result: dict) -> str:
    rows = ["| group | n | accuracy |", "|---|---|---|"]
    for key, value in result["accuracy"].items():
        rows.append(f"| {key} | {value['n']} | {value['rate']:.3f} |")
    return "\n".join(rows)


CARD_TYPES = ("presence", "colour", "shape", "count", "position", "caption")


def card_tables(result: dict) -> str:
    """The measured part of MODEL_CARD.md: accuracy by type and agreement, hallucination rates."""
    acc = result["accuracy"]
    hallucination = result["hallucination"]
    rows = ["| question type | all | agrees with prior | conflicts with prior |", "|---|---|---|---|"]
    for kind in CARD_TYPES:
        cell = lambda key: (f"{acc[key]['rate']:.3f} (n={acc[key]['n']})" if key in acc else "-")
        rows.append(f"| {kind} | {cell(kind)} | {cell(kind + '/agreeing')} | {cell(kind + '/conflicting')} |")
    rows += ["", "| presence subtype | n | accuracy |", "|---|---|---|"]
    for key, value in acc.items():
        if key.startswith("presence/") and key.split("/")[1] not in ("agreeing", "conflicting"):
            rows.append(f"| {key.split('/')[1]} | {value['n']} | {value['rate']:.3f} |")
    h = hallucination
    rows += ["", "| hallucination measure | n | rate |", "|---|---|---|",
             (f"| presence, prior says yes, truth no: answered yes | {h['presence_prior_yes_truth_no']['n']} | "
              f"{h['presence_prior_yes_truth_no']['rate']:.3f} |")]
    for sub, value in h["presence_by_subtype"].items():
        rows.append(f"| ... of which {sub} | {value['n']} | {value['rate']:.3f} |")
    for kind, value in h["prior_answer_on_conflicting"].items():
        rows.append(f"| {kind}, prior-conflicting: answered the prior's answer | {value['n']} | {value['rate']:.3f} |")
    rows.append(f"| captions: CHAIR_i (mentioned objects not in the scene) | - | {h['caption_chair_i']:.3f} |")
    rows.append(f"| captions: CHAIR_s (captions with a hallucinated object) | - | {h['caption_chair_s']:.3f} |")
    return "\n".join(rows)


def write_card(result: dict, card: Path = HERE / "MODEL_CARD.md") -> None:
    """Replace the measured section of the card (between the two markers) with the tables of `result`."""
    start, end = "<!-- measured:start -->", "<!-- measured:end -->"
    text = card.read_text()
    head, rest = text.split(start)
    _, tail = rest.split(end)
    card.write_text(f"{head}{start}\n{card_tables(result)}\n{end}{tail}")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default=str(HERE), help="registry name or model directory")
    parser.add_argument("--data", type=Path, default=DATA)
    parser.add_argument("--limit", type=int, default=None, help="evaluate a seeded sample of this many questions")
    parser.add_argument("--out", type=Path, default=None, help="where to write the JSON (default: print only)")
    parser.add_argument("--write-card", action="store_true", help="update the tables in MODEL_CARD.md")
    args = parser.parse_args(argv)
    import torch

    import workbench

    torch.set_num_threads(2)
    loaded = workbench.load_model(args.model)
    questions = load_questions(args.data, args.limit)
    start = time.time()
    answers = answer(loaded, questions, args.data)
    result = summarise(questions, answers)
    result["seconds"] = round(time.time() - start, 1)
    result["command"] = "python data/models/llava_scenes/evaluate.py " + " ".join(argv or sys.argv[1:])
    print(markdown(result))
    print(json.dumps(result["hallucination"], indent=1))
    if args.out:
        args.out.write_text(json.dumps(result, indent=1) + "\n")
    if args.write_card:
        write_card(result)
    return 0


if __name__ == "__main__":
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    raise SystemExit(main())
