"""Experiment (not shipped): does smol-llava's presence accuracy rise when stage 2 goes on with the answer word
weighted up in the loss?

Why: a full-sentence answer restates its subject ("No, there is no red circle."), so all but one or two of its
~10 supervised tokens are copied from the question; the token that needs the image is one of them. At chance on
that token the mean stage-2 loss is already ~0.08, which is where the shipped run's loss sat from step ~300 to
1000. This script continues from the shipped trained files with the answer-word tokens weighted by --weight,
and measures presence accuracy on a fixed set of held-out presence questions before and every --every steps.

    python benchmarks/experiments/smol_llava_answer_weight.py --steps 600 --every 200 --weight 8 \
        --questions 120 --out /tmp/smol-answer-weight        # curve.json + the continued files there
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
FOLDER = ROOT / "data" / "models" / "smol_llava"


def local(name: str):
    import importlib.util

    spec = importlib.util.spec_from_file_location(f"smol_llava_{name}", FOLDER / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def answer_word_mask(tokenizer, labels: torch.Tensor) -> torch.Tensor:
    """[batch, pos] True where a supervised token is a scene answer word (yes/no, a colour, shape, count or
    relation): the tokens a sentence answer cannot copy from its question (its subject words are included too:
    they are cheap to predict, so weighting them changes little)."""
    from workbench.datasets.scenes import ANSWER_WORDS

    words = {w for values in ANSWER_WORDS.values() for w in values}
    flat = labels.clamp(min=0).flatten().tolist()
    texts = tokenizer.convert_ids_to_tokens(flat)
    hits = [t.replace("Ġ", "").strip(" ,.").lower() in words for t in texts]
    return torch.tensor(hits).view_as(labels) & (labels >= 0)


def save_trained(model, lora: dict, out: Path) -> None:
    """The continued projector and adapters in the shipped files' layout (evaluate.py --dir OUT reads them)."""
    from safetensors.torch import save_file

    from workbench.models import smol_llava

    projector = {k: p.detach().contiguous() for k, p in model.model.multi_modal_projector.state_dict().items()}
    save_file(projector, str(out / smol_llava.PROJECTOR_FILE))
    adapters = {f"{path}.{name}": getattr(module, name).detach().contiguous()
                for path, module in lora.items() for name in ("lora_A", "lora_B")}
    save_file(adapters, str(out / smol_llava.ADAPTERS_FILE))
    (out / smol_llava.ADAPTER_CONFIG_FILE).write_text((FOLDER / smol_llava.ADAPTER_CONFIG_FILE).read_text())


def presence_accuracy(model, processor, questions: list[dict]) -> float:
    from PIL import Image

    from workbench.datasets import scenes

    right = 0
    model.eval()
    for qa in questions:
        messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": qa["question"]}]}]
        text = processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        inputs = processor(text=text, images=Image.open(ROOT / "data" / "scenes" / qa["image"]).convert("RGB"),
                           return_tensors="pt")
        with torch.no_grad():
            out = model.generate(**inputs, max_new_tokens=2, do_sample=False)
        said = processor.tokenizer.decode(out[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True)
        right += scenes.stated_answer("presence", said) == qa["answer"]
    model.train()
    return right / len(questions)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=600)
    parser.add_argument("--every", type=int, default=200)
    parser.add_argument("--weight", type=float, default=8.0)
    parser.add_argument("--lr", type=float, default=2e-4)
    parser.add_argument("--questions", type=int, default=120)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    from safetensors.torch import load_file

    from workbench.models import packaged, smol_llava

    train = local("train")
    cfg = dict(train.FULL)
    from workbench.datasets.scene_questions import read_questions

    rows = read_questions(ROOT / "data" / "scenes")
    agreeing = [r for r in rows if r["type"] == "presence" and not r.get("conflicts")]
    questions = random.Random("answer-weight").sample(agreeing, args.questions)

    model, processor = smol_llava.compose_from_dirs(packaged.dinov2_dir(), packaged.smollm2_dir())
    model.model.multi_modal_projector.load_state_dict(load_file(str(FOLDER / smol_llava.PROJECTOR_FILE)))
    lora = train.attach_lora(model, cfg["rank"], cfg["alpha"], cfg["seed"])
    adapters = load_file(str(FOLDER / smol_llava.ADAPTERS_FILE))
    with torch.no_grad():
        for path, module in lora.items():
            module.lora_A.copy_(adapters[f"{path}.lora_A"])
            module.lora_B.copy_(adapters[f"{path}.lora_B"])
    features = train.cached_features(model, processor, cfg, print)
    params = train.trainables(model, lora)
    for p in model.parameters():
        p.requires_grad_(False)
    for p in params.values():
        p.requires_grad_(True)
    optimizer = torch.optim.AdamW(list(params.values()), lr=args.lr, weight_decay=0.0)
    args.out.mkdir(parents=True, exist_ok=True)
    curve = [{"step": 0, "presence_accuracy_prior_agreeing": presence_accuracy(model, processor, questions)}]
    print(json.dumps(curve[-1]), flush=True)
    start = time.time()
    for step in range(args.steps):
        # other batches than the shipped run's 1000 (their seeds continue after them)
        batch = train.make_batch(processor.tokenizer, features, cfg, 2, 1000 + step, model.config.image_seq_length)
        logits = train.forward_from_features(model, batch["input_ids"], batch["attention_mask"], batch["features"])
        labels = batch["labels"][:, 1:]
        losses = torch.nn.functional.cross_entropy(logits[:, :-1].flatten(0, 1), labels.flatten(),
                                                   reduction="none").view_as(labels)
        weights = (labels >= 0).float() + (args.weight - 1) * answer_word_mask(processor.tokenizer, labels).float()
        loss = (losses * weights).sum() / weights.sum()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(list(params.values()), 1.0)
        optimizer.step()
        if (step + 1) % 25 == 0:
            print(f"{time.strftime('%H:%M:%S')} step {step + 1}/{args.steps} loss {loss.item():.4f} "
                  f"{(time.time() - start) / (step + 1):.2f} s/step", flush=True)
        if (step + 1) % args.every == 0 or step + 1 == args.steps:
            curve.append({"step": step + 1, "presence_accuracy_prior_agreeing":
                          presence_accuracy(model, processor, questions)})
            print(json.dumps(curve[-1]), flush=True)
            (args.out / "curve.json").write_text(json.dumps(
                {"weight": args.weight, "lr": args.lr, "questions": args.questions, "curve": curve}, indent=1))
    save_trained(model, lora, args.out)  # to evaluate further or continue from: not a shipped recipe
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
