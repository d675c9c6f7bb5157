"""`llava-scenes`: loads through the registry as a real LLaVA, its model card's held-out numbers hold on a
sample of the shipped held-out set (recomputed here against the scene truth), and the training script's smoke
mode runs without touching the shipped model."""

from __future__ import annotations

import hashlib
import importlib.util
import json
import math
import random
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import workbench
from workbench.datasets import scenes
from workbench.models.registry import data_root

MODEL_DIR = data_root() / "models" / "llava_scenes"
SCENES = data_root() / "scenes"


def _module(name: str):
    spec = importlib.util.spec_from_file_location(f"llava_scenes_{name}", MODEL_DIR / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def loaded():
    return workbench.load_model("llava-scenes")


@pytest.fixture(scope="module")
def card():
    return json.loads((MODEL_DIR / "eval.json").read_text())


def test_is_a_real_llava_with_gqa_and_a_chat_template(loaded):
    assert type(loaded.model).__name__ == "LlavaForConditionalGeneration" and loaded.kind == "vlm"
    text = loaded.model.config.text_config
    assert text.model_type == "llama" and text.num_key_value_heads < text.num_attention_heads
    assert loaded.has_chat_template and loaded.processor is not None
    parameters = sum(p.numel() for p in loaded.model.parameters())
    assert 5e5 < parameters < 5e6


def test_card_reports_the_measured_numbers(card):
    text = (MODEL_DIR / "MODEL_CARD.md").read_text()
    agree = card["accuracy"]["presence/agreeing"]["rate"]
    hallucination = card["hallucination"]["presence_prior_yes_truth_no"]["rate"]
    assert f"{agree:.3f}" in text and f"{hallucination:.3f}" in text
    assert "evaluate.py" in text and "train.py" in text


def _sample(kind: str, n: int, seed: int = 1) -> list[dict]:
    questions = [json.loads(line) for line in (SCENES / "questions.jsonl").read_text().splitlines()]
    if kind == "agreeing":
        pool = [q for q in questions if q["type"] == "presence" and not q["conflicts"]]
    else:
        pool = [q for q in questions if q["type"] == "presence"
                and q["subtype"] in ("absent-attribute-swap", "absent-cooccurrence")]
    return random.Random(seed).sample(pool, n)


def _tolerance(rate: float, n: int) -> float:
    return 3 * math.sqrt(max(rate * (1 - rate), 0.02) / n)  # 3 sigma of a binomial sample


def test_heldout_presence_accuracy_and_hallucination_rate(loaded, card):
    """Recompute the card's two headline numbers on a seeded sample, scored against the scene truth."""
    evaluate = _module("evaluate")
    torch.set_num_threads(2)
    agreeing, conflicting = _sample("agreeing", 120), _sample("conflicting", 80)
    answers = evaluate.answer(loaded, agreeing + conflicting, SCENES)
    accuracy = sum(a == q["answer"] for q, a in zip(agreeing, answers)) / len(agreeing)
    hallucination = sum(a == "yes" for a in answers[len(agreeing):]) / len(conflicting)
    claimed_accuracy = card["accuracy"]["presence/agreeing"]["rate"]
    claimed_hallucination = card["hallucination"]["presence_prior_yes_truth_no"]["rate"]
    assert abs(accuracy - claimed_accuracy) <= _tolerance(claimed_accuracy, len(agreeing))
    assert abs(hallucination - claimed_hallucination) <= _tolerance(claimed_hallucination, len(conflicting))
    assert 0 < hallucination < 1  # both classes exist for the probes


def test_trace_generates_the_same_answer(loaded):
    """The workbench's own capture path (chat template, image tokens, greedy decoding) answers like generate()."""
    evaluate = _module("evaluate")
    for question in _sample("agreeing", 3, seed=7):
        trace = workbench.trace(loaded, question["question"], image=SCENES / question["image"], max_new_tokens=3)
        assert sum(t.region == "image" for t in trace.tokens) == 36
        generated = scenes.normalise(trace.generation["text"])
        assert generated == evaluate.answer(loaded, [question], SCENES)[0]


def test_training_input_matches_the_processor():
    train = _module("train")
    from transformers import AutoProcessor

    processor = AutoProcessor.from_pretrained(MODEL_DIR)
    image = scenes.render(scenes.heldout_scene(3))
    reference = processor(images=image, text="<image>", return_tensors="pt")["pixel_values"]
    assert torch.allclose(train.pixels([image]), reference, atol=1e-5)
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Is there a red circle?"}]}]
    text = processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    ids, labels = train.encode(processor.tokenizer, "Is there a red circle?", "yes", 36)
    expected = processor(text=text, images=image, return_tensors="pt")["input_ids"][0].tolist()
    assert ids[:len(expected)] == expected
    assert processor.tokenizer.decode([i for i, label in zip(ids, labels) if label != -100]) == "yes<|im_end|>"
    turns = [("Is there a red circle?", "yes"), ("Describe the image.", "a red circle.")]
    conversation = [messages[0], {"role": "assistant", "content": "yes"},
                    {"role": "user", "content": "Describe the image."}, {"role": "assistant", "content": "a red circle."}]
    rendered = processor.apply_chat_template(conversation, tokenize=False)
    ids, labels = train.encode_conversation(processor.tokenizer, turns, 36)
    assert ids == processor(text=rendered, images=image, return_tensors="pt")["input_ids"][0].tolist()
    supervised = processor.tokenizer.decode([i for i, label in zip(ids, labels) if label != -100])
    assert supervised == "yes<|im_end|>a red circle.<|im_end|>"
    for word in train.domain_words():
        assert len(processor.tokenizer(" " + word, add_special_tokens=False)["input_ids"]) == 1


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_smoke_training_run_leaves_the_shipped_model_alone(tmp_path):
    shipped = {p.name: _digest(p) for p in MODEL_DIR.iterdir() if p.is_file()}
    out = tmp_path / "smoke"
    result = subprocess.run([sys.executable, str(MODEL_DIR / "train.py"), "--smoke", "--out", str(out)],
                            capture_output=True, text=True, timeout=180, check=False)
    assert result.returncode == 0, result.stderr[-2000:]
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    assert math.isfinite(summary["final_loss"]) and Path(summary["out"]) == out
    assert (out / "model.safetensors").exists() and (out / "processor_config.json").exists()
    reloaded = workbench.load_model(str(out))
    assert type(reloaded.model).__name__ == "LlavaForConditionalGeneration"
    refused = subprocess.run([sys.executable, str(MODEL_DIR / "train.py"), "--smoke", "--out", str(MODEL_DIR)],
                             capture_output=True, text=True, timeout=120, check=False)
    assert refused.returncode != 0
    assert shipped == {p.name: _digest(p) for p in MODEL_DIR.iterdir() if p.is_file()}


def test_shipped_data_stays_under_30_mb():
    total = sum(p.stat().st_size for p in data_root().rglob("*") if p.is_file() and "__pycache__" not in p.parts)
    assert total < 30 * 1024 * 1024
