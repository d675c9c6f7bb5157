"""Train `llava-scenes`: a real LlavaForConditionalGeneration (tiny CLIP tower + projector + Llama with GQA)
on synthetic Pillow scenes (workbench.datasets.scenes) whose training distribution carries a language prior.

    python data/models/llava_scenes/train.py                 # the full run (6-14 min measured, see MODEL_CARD.md)
    python data/models/llava_scenes/train.py --smoke         # a few steps into a fresh temp dir (CI)
    python data/models/llava_scenes/train.py --out DIR       # a full run elsewhere

Seeded end to end (torch, the scene sampler, the question sampler); examples are generated on the fly, the
batch of step s from random.Random(f"train:{seed}:{s}"), so no training scene is shared with the held-out
set (drawn from random.Random("heldout:...") with a different prior). Each image comes with a conversation of
1-4 questions (multi-turn, as in LLaVA's instruction data); answers are the only supervised tokens, plus an
auxiliary per-patch shape/colour probe on the projected image tokens that is discarded after training.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
if str(HERE.parents[2]) not in sys.path:  # run as a script from a checkout
    sys.path.insert(0, str(HERE.parents[2]))

from workbench.datasets import scenes
from workbench.models.byte_tokenizer import CHATML_TEMPLATE, SPECIAL_TOKENS

CLIP_MEAN = np.array([0.48145466, 0.4578275, 0.40821073], dtype=np.float32)
CLIP_STD = np.array([0.26862954, 0.26130258, 0.27577711], dtype=np.float32)

FULL = {"steps": 2400, "batch": 24, "lr": 2e-3, "warmup": 100, "seed": 0, "aux": 0.5}
SMOKE = {"steps": 3, "batch": 4, "lr": 2e-3, "warmup": 1, "seed": 0, "aux": 0.5}
MODEL = {"vision_hidden": 64, "vision_layers": 3, "vision_heads": 4, "vision_mlp": 128, "text_hidden": 128,
         "text_layers": 3, "text_heads": 4, "text_kv_heads": 2, "text_mlp": 256, "max_positions": 256}


def domain_words() -> list[str]:
    """Every word the scene questions, answers and the chat template use."""
    words = set()
    for text in ["Is there a", "What colour is the", "What shape is the object", "How many shapes are there",
                 "Where is the relative to the", "Describe the image", "yes no left right above below and",
                 "user assistant system", *scenes.COLOURS, *scenes.SHAPES]:
        words.update(text.split())
    return sorted(words)


def scenes_tokenizer():
    """The workbench byte-level tokenizer (same specials and ids 0..263) plus one token per domain word.

    A pre-tokenized word found in the vocabulary becomes one token (BPE `ignore_merges`), anything else falls
    back to bytes, so every text still encodes; this halves the sequence length of the byte-level tokenizer.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {token: i for i, token in enumerate(SPECIAL_TOKENS)}
    for symbol in sorted(pre_tokenizers.ByteLevel.alphabet()):
        vocab[symbol] = len(vocab)
    for word in domain_words():
        for piece in (word, "\u0120" + word):  # \u0120 marks a preceding space in byte-level BPE
            vocab.setdefault(piece, len(vocab))
    backend = Tokenizer(models.BPE(vocab=vocab, merges=[], ignore_merges=True))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    backend.decoder = decoders.ByteLevel()
    backend.add_special_tokens(SPECIAL_TOKENS)
    backend.post_processor = processors.TemplateProcessing(
        single="<|bos|> $A", special_tokens=[("<|bos|>", vocab["<|bos|>"])])
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, bos_token="<|bos|>", eos_token="<|im_end|>",
                                        pad_token="<|pad|>", extra_special_tokens={"image_token": "<image>"})
    tokenizer.chat_template = CHATML_TEMPLATE
    return tokenizer


def build(model_cfg: dict = MODEL):
    """A freshly initialised model and its processor (offline byte-level tokenizer, CLIP pillow preprocessing)."""
    from transformers import (
        CLIPVisionConfig,
        LlamaConfig,
        LlavaConfig,
        LlavaForConditionalGeneration,
        LlavaProcessor,
    )
    from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

    size, patch = scenes.IMAGE_SIZE, scenes.PATCH_SIZE
    tokenizer = scenes_tokenizer()
    vision = CLIPVisionConfig(
        hidden_size=model_cfg["vision_hidden"], intermediate_size=model_cfg["vision_mlp"],
        num_hidden_layers=model_cfg["vision_layers"], num_attention_heads=model_cfg["vision_heads"],
        image_size=size, patch_size=patch, projection_dim=model_cfg["vision_hidden"],
    )
    text = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=model_cfg["text_hidden"], intermediate_size=model_cfg["text_mlp"],
        num_hidden_layers=model_cfg["text_layers"], num_attention_heads=model_cfg["text_heads"],
        num_key_value_heads=model_cfg["text_kv_heads"], max_position_embeddings=model_cfg["max_positions"],
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id, tie_word_embeddings=False,
    )
    config = LlavaConfig(
        vision_config=vision, text_config=text, image_token_id=tokenizer.convert_tokens_to_ids("<image>"),
        vision_feature_layer=-1, vision_feature_select_strategy="default", projector_hidden_act="gelu",
        image_seq_length=(size // patch) ** 2,
    )
    image_processor = CLIPImageProcessorPil(size={"shortest_edge": size}, crop_size={"height": size, "width": size})
    processor = LlavaProcessor(
        image_processor=image_processor, tokenizer=tokenizer, patch_size=patch,
        vision_feature_select_strategy="default", chat_template=CHATML_TEMPLATE, num_additional_image_tokens=1,
    )
    model = LlavaForConditionalGeneration(config)
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    return model, processor


def pixels(images) -> torch.Tensor:
    """CLIP normalisation of 48 x 48 images: exactly what the processor does at this size (tested)."""
    array = np.stack([np.asarray(image, dtype=np.float32) for image in images]) / 255.0
    return torch.from_numpy(((array - CLIP_MEAN) / CLIP_STD).transpose(0, 3, 1, 2).copy())


def encode(tokenizer, question: str, answer: str | None, n_image_tokens: int, with_image: bool = True):
    """(input_ids, labels) of one chat turn; labels cover the answer and its <|im_end|> only."""
    content = [{"type": "image"}, {"type": "text", "text": question}] if with_image else question
    messages = [{"role": "user", "content": content}]
    prompt = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    prompt = prompt.replace("<image>", "<image>" * n_image_tokens)
    prompt_ids = tokenizer(prompt)["input_ids"]
    if answer is None:
        return prompt_ids, None
    answer_ids = tokenizer(answer + "<|im_end|>", add_special_tokens=False)["input_ids"]
    return prompt_ids + answer_ids, [-100] * len(prompt_ids) + answer_ids


SHAPE_CLASSES = ("background", *scenes.SHAPES)
COLOUR_CLASSES = ("background", *scenes.COLOURS)


def patch_targets(scene) -> tuple[list[int], list[int]]:
    """Auxiliary per-patch targets (class ids of SHAPE_CLASSES, COLOUR_CLASSES) from the scene truth."""
    shapes, colours = [], []
    for index in scenes.patch_labels(scene):
        obj = scene.objects[index] if index >= 0 else None
        shapes.append(SHAPE_CLASSES.index(obj.shape) if obj else 0)
        colours.append(COLOUR_CLASSES.index(obj.colour) if obj else 0)
    return shapes, colours


def encode_conversation(tokenizer, turns: list[tuple[str, str]], n_image_tokens: int):
    """(input_ids, labels) of a multi-turn chat about one image (in the first turn), exactly as the chat
    template renders it; labels cover each answer and its <|im_end|>."""
    ids, labels = [], []
    for index, (question, answer) in enumerate(turns):
        if index == 0:
            turn_ids, turn_labels = encode(tokenizer, question, answer, n_image_tokens)
        else:
            prompt = f"<|im_start|>user\n{question}<|im_end|>\n<|im_start|>assistant\n"
            prompt_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
            answer_ids = tokenizer(answer + "<|im_end|>", add_special_tokens=False)["input_ids"]
            turn_ids, turn_labels = prompt_ids + answer_ids, [-100] * len(prompt_ids) + answer_ids
        newline = tokenizer("\n", add_special_tokens=False)["input_ids"]
        ids += turn_ids + newline
        labels += turn_labels + [-100] * len(newline)
    return ids, labels


def make_batch(tokenizer, seed: int, step: int, size: int, n_image_tokens: int, max_turns: int = 4) -> dict:
    """`size` images, each with a conversation of 1..max_turns independent questions (like LLaVA's multi-turn
    instruction data: more supervised answers per image token)."""
    rng = random.Random(f"train:{seed}:{step}")
    images, ids, labels, shape_targets, colour_targets = [], [], [], [], []
    for _ in range(size):
        scene = scenes.sample_scene(rng, scenes.TRAIN_PRIOR)
        turns: dict[str, str] = {}
        for _ in range(rng.randint(1, max_turns)):
            qa = scenes.sample_question(scene, rng)
            turns.setdefault(qa.question, qa.answer)
        images.append(scenes.render(scene))
        shape_target, colour_target = patch_targets(scene)
        shape_targets.append(shape_target)
        colour_targets.append(colour_target)
        example_ids, example_labels = encode_conversation(tokenizer, list(turns.items()), n_image_tokens)
        ids.append(example_ids)
        labels.append(example_labels)
    width = max(map(len, ids))
    pad = tokenizer.pad_token_id
    return {
        "input_ids": torch.tensor([x + [pad] * (width - len(x)) for x in ids]),
        "attention_mask": torch.tensor([[1] * len(x) + [0] * (width - len(x)) for x in ids]),
        "labels": torch.tensor([x + [-100] * (width - len(x)) for x in labels]),
        "pixel_values": pixels(images),
        "patch_shape": torch.tensor(shape_targets), "patch_colour": torch.tensor(colour_targets),
    }


def learning_rate(step: int, cfg: dict) -> float:
    if step < cfg["warmup"]:
        return cfg["lr"] * (step + 1) / cfg["warmup"]
    progress = (step - cfg["warmup"]) / max(1, cfg["steps"] - cfg["warmup"])
    return cfg["lr"] * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * progress)))


def train(cfg: dict, out: Path, *, log_every: int = 25) -> dict:
    torch.set_num_threads(2)
    torch.manual_seed(cfg["seed"])
    model, processor = build()
    tokenizer = processor.tokenizer
    n_image = model.config.image_seq_length
    model.train()
    # Auxiliary probe (discarded after training): the projected image tokens must linearly encode the shape and
    # colour of their patch. It speeds up learning to see; the shipped model is the plain LLaVA.
    aux = torch.nn.Linear(model.config.text_config.hidden_size, len(SHAPE_CLASSES) + len(COLOUR_CLASSES))
    captured = {}
    model.model.multi_modal_projector.register_forward_hook(lambda m, i, o: captured.__setitem__("tokens", o))
    optimizer = torch.optim.AdamW([*model.parameters(), *aux.parameters()], lr=cfg["lr"], betas=(0.9, 0.98),
                                  weight_decay=0.01)
    history, start = [], time.time()
    for step in range(cfg["steps"]):
        for group in optimizer.param_groups:
            group["lr"] = learning_rate(step, cfg)
        batch = make_batch(tokenizer, cfg["seed"], step, cfg["batch"], n_image)
        patch_shape, patch_colour = batch.pop("patch_shape"), batch.pop("patch_colour")
        loss = model(**batch).loss
        logits = aux(captured.pop("tokens").reshape(-1, aux.in_features))
        n_shapes = len(SHAPE_CLASSES)
        aux_loss = torch.nn.functional.cross_entropy(logits[:, :n_shapes], patch_shape.reshape(-1)) + \
            torch.nn.functional.cross_entropy(logits[:, n_shapes:], patch_colour.reshape(-1))
        loss = loss + cfg["aux"] * aux_loss
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        history.append(loss.item())
        if step % log_every == 0 or step == cfg["steps"] - 1:
            recent = sum(history[-log_every:]) / len(history[-log_every:])
            print(f"step {step:5d}  loss {recent:.4f}  lr {learning_rate(step, cfg):.2e}  "
                  f"{time.time() - start:7.1f} s", flush=True)
    seconds = time.time() - start
    model.eval()
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    processor.save_pretrained(out)
    n_params = sum(p.numel() for p in model.parameters())
    log = {"config": cfg, "model": MODEL, "parameters": n_params, "train_seconds": round(seconds, 1),
           "torch_threads": torch.get_num_threads(), "final_loss": sum(history[-50:]) / len(history[-50:]),
           "loss_every_25": [round(sum(history[i:i + 25]) / len(history[i:i + 25]), 4)
                             for i in range(0, len(history), 25)]}
    (out / "training_log.json").write_text(json.dumps(log, indent=1) + "\n")
    return log


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--smoke", action="store_true", help="a few steps into a temp dir (never the shipped model)")
    parser.add_argument("--out", type=Path, default=None, help="output directory (default: beside this script)")
    parser.add_argument("--steps", type=int, default=None)
    parser.add_argument("--batch", type=int, default=None)
    args = parser.parse_args(argv)
    cfg = dict(SMOKE if args.smoke else FULL)
    if args.steps is not None:
        cfg["steps"] = args.steps
    if args.batch is not None:
        cfg["batch"] = args.batch
    out = args.out
    if args.smoke or cfg != FULL:
        if out is None:
            out = Path(tempfile.mkdtemp(prefix="llava-scenes-smoke-"))
        elif out.resolve() == HERE:
            parser.error("a smoke or shortened run must not overwrite the shipped model; pass another --out")
    elif out is None:
        out = HERE
    log = train(cfg, out, log_every=1 if args.smoke else 25)
    print(json.dumps({"out": str(out), "train_seconds": log["train_seconds"], "final_loss": log["final_loss"],
                      "parameters": log["parameters"]}))
    return 0


if __name__ == "__main__":
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    raise SystemExit(main())
