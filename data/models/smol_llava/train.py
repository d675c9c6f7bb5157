"""Train `smol-llava`'s projector and LoRA adapters, LLaVA-1.5's two stages, over the packaged real bases.

    python data/models/smol_llava/train.py                  # the full run (about an hour, see README.md)
    python data/models/smol_llava/train.py --minutes 30     # stop cleanly after 30 min; the same command resumes
    python data/models/smol_llava/train.py --smoke          # a few steps of each stage into a temp dir

1. Features: the frozen DINOv2 tower runs once over every training scene (the image processor's pixels, the
   tower's penultimate layer without [CLS], exactly what the model computes); cached in the workbench cache.
2. Stage 1, alignment: only the projector learns, on captions ("The image shows a red circle and ...").
3. Stage 2, instruction tuning: projector + LoRA adapters (q and v projections of every SmolLM2 layer) on scene
   questions with full-sentence answers, unanswerable questions included (examples.py).
Only answer tokens are supervised. Seeded end to end: scene i is random.Random(f"smol-llava:{seed}:{i}") under
the training prior, batch s of stage k draws from random.Random(f"stage{k}:{seed}:{s}"), so a resumed run
sees the same batches. Checkpoints (safetensors + JSON) every `--save-every` steps; progress in progress.log.
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

import torch

HERE = Path(__file__).resolve().parent
if str(HERE.parents[2]) not in sys.path:  # run as a script from a checkout
    sys.path.insert(0, str(HERE.parents[2]))

from workbench.datasets import scenes
from workbench.models import packaged, smol_llava


def local_module(name: str):
    """A script of this folder by file path (llava_scenes has an evaluate.py too: no sys.path clashes)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(f"smol_llava_{name}", HERE / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


examples = local_module("examples")

FULL = {"scenes": 3000, "batch": 8, "stage1_steps": 250, "stage2_steps": 1000, "lr1": 1e-3, "lr2": 2e-4,
        "warmup": 20, "rank": 8, "alpha": 16, "seed": 0}
SMOKE = dict(FULL, scenes=16, stage1_steps=3, stage2_steps=3, warmup=1)
LORA_TARGETS = ("q_proj", "v_proj")


class LoraLinear(torch.nn.Module):
    """base(x) + (alpha / rank) * B(A(x)): B starts at zero so training starts from the unchanged model."""

    def __init__(self, base: torch.nn.Linear, rank: int, alpha: float, generator: torch.Generator):
        super().__init__()
        self.base, self.scale = base, alpha / rank
        bound = 1 / math.sqrt(base.in_features)
        self.lora_A = torch.nn.Parameter((torch.rand(rank, base.in_features, generator=generator) * 2 - 1) * bound)
        self.lora_B = torch.nn.Parameter(torch.zeros(base.out_features, rank))

    def forward(self, x):
        return self.base(x) + self.scale * (x @ self.lora_A.T) @ self.lora_B.T


def attach_lora(model, rank: int, alpha: float, seed: int) -> dict[str, LoraLinear]:
    """Wrap the q/v projections of every language-model layer; returns {module path: wrapper}."""
    generator = torch.Generator().manual_seed(seed)
    wrapped = {}
    for index, layer in enumerate(model.model.language_model.layers):
        for target in LORA_TARGETS:
            lora = LoraLinear(getattr(layer.self_attn, target), rank, alpha, generator)
            setattr(layer.self_attn, target, lora)
            wrapped[f"model.language_model.layers.{index}.self_attn.{target}"] = lora
    return wrapped


def training_scene(seed: int, index: int):
    return scenes.sample_scene(random.Random(f"smol-llava:{seed}:{index}"), scenes.TRAIN_PRIOR)


def tower_features(model, processor, images) -> torch.Tensor:
    """[n, image tokens, d_vision]: what LlavaModel.get_image_features feeds the projector."""
    pixels = processor.image_processor(images=images, return_tensors="pt")["pixel_values"]
    with torch.no_grad():
        hidden = model.model.vision_tower(pixels, output_hidden_states=True).hidden_states
    return hidden[model.config.vision_feature_layer][:, 1:]


def cached_features(model, processor, cfg: dict, log) -> torch.Tensor:
    """Tower features of every training scene, computed once and kept in the workbench cache (fp16)."""
    from safetensors.torch import load_file, save_file

    name = (f"features-seed{cfg['seed']}-{cfg['scenes']}-{smol_llava.IMAGE_SIZE}px-"
            f"layer{model.config.vision_feature_layer}.safetensors")  # stale caches cannot match a changed recipe
    path = packaged.cache_dir() / "smol_llava" / name
    if path.exists():
        return load_file(str(path))["features"].float()
    start, chunks = time.time(), []
    for first in range(0, cfg["scenes"], 32):
        images = [scenes.render(training_scene(cfg["seed"], i)) for i in range(first, min(first + 32, cfg["scenes"]))]
        chunks.append(tower_features(model, processor, images).half())
        log(f"features {first + len(images)}/{cfg['scenes']}  {time.time() - start:.0f} s")
    features = torch.cat(chunks)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({"features": features.contiguous()}, str(path.with_suffix(".tmp")))
    os.replace(path.with_suffix(".tmp"), path)
    return features.float()


def encode(tokenizer, question: str, answer: str, n_image_tokens: int) -> tuple[list[int], list[int]]:
    """(input_ids, labels) of one turn rendered by the model's chat template; labels cover the answer and
    its <|im_end|> only."""
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": question}]}]
    prompt = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    prompt = prompt.replace(smol_llava.IMAGE_TOKEN, smol_llava.IMAGE_TOKEN * n_image_tokens)
    prompt_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    answer_ids = tokenizer(answer + "<|im_end|>", add_special_tokens=False)["input_ids"]
    return prompt_ids + answer_ids, [-100] * len(prompt_ids) + answer_ids


def make_batch(tokenizer, features: torch.Tensor, cfg: dict, stage: int, step: int, n_image_tokens: int) -> dict:
    rng = random.Random(f"stage{stage}:{cfg['seed']}:{step}")
    build = examples.stage1_example if stage == 1 else examples.stage2_example
    indices = [rng.randrange(len(features)) for _ in range(cfg["batch"])]
    ids, labels = zip(*(encode(tokenizer, *build(training_scene(cfg["seed"], i), rng), n_image_tokens)
                        for i in indices))
    width, pad = max(map(len, ids)), tokenizer.pad_token_id
    return {"input_ids": torch.tensor([x + [pad] * (width - len(x)) for x in ids]),
            "attention_mask": torch.tensor([[1] * len(x) + [0] * (width - len(x)) for x in ids]),
            "labels": torch.tensor([x + [-100] * (width - len(x)) for x in labels]),
            "features": features[indices]}


def forward_from_features(model, input_ids, attention_mask, features) -> torch.Tensor:
    """Logits [batch, query_pos, vocab] of the LLaVA with cached tower features in place of pixels: the
    projected features scattered over the image tokens, as LlavaModel.forward does."""
    embeds = model.get_input_embeddings()(input_ids)
    image_embeds = model.model.multi_modal_projector(features).to(embeds.dtype)
    mask = (input_ids == model.config.image_token_id).unsqueeze(-1).expand_as(embeds)
    embeds = embeds.masked_scatter(mask, image_embeds.reshape(-1))
    hidden = model.model.language_model(inputs_embeds=embeds, attention_mask=attention_mask).last_hidden_state
    return model.lm_head(hidden)


def learning_rate(step: int, steps: int, peak: float, warmup: int) -> float:
    if step < warmup:
        return peak * (step + 1) / warmup
    return peak * 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, steps - warmup)))


def trainables(model, lora: dict) -> dict[str, torch.nn.Parameter]:
    named = {f"projector.{k}": p for k, p in model.model.multi_modal_projector.named_parameters()}
    for path, module in lora.items():
        named[f"{path}.lora_A"], named[f"{path}.lora_B"] = module.lora_A, module.lora_B
    return named


def save_checkpoint(work: Path, params: dict, optimizer, state: dict) -> None:
    from safetensors.torch import save_file

    tensors = {name: p.detach().contiguous() for name, p in params.items()}
    for name, p in params.items():
        for key, value in optimizer.state.get(p, {}).items():
            if torch.is_tensor(value) and value.dim() > 0:
                tensors[f"adam.{key}.{name}"] = value.contiguous()
    work.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(work / "checkpoint.tmp"))
    os.replace(work / "checkpoint.tmp", work / "checkpoint.safetensors")
    (work / "state.json").write_text(json.dumps(state))


def load_checkpoint(work: Path, params: dict, optimizer, stage: int) -> dict | None:
    """Restore a checkpoint of `stage` (parameters and AdamW moments); a finished stage 1 seeds stage 2."""
    from safetensors.torch import load_file

    if not (work / "state.json").exists():
        return None
    state = json.loads((work / "state.json").read_text())
    tensors = load_file(str(work / "checkpoint.safetensors"))
    with torch.no_grad():
        for name, p in params.items():
            if name in tensors:
                p.copy_(tensors[name])
    if state["stage"] != stage:
        return state
    for name, p in params.items():
        moments = {key: tensors[f"adam.{key}.{name}"] for key in ("exp_avg", "exp_avg_sq")
                   if f"adam.{key}.{name}" in tensors}
        if moments:
            optimizer.state[p] = {**moments, "step": torch.tensor(float(state["step"]))}
    return state


def run_stage(model, tokenizer, features, cfg: dict, stage: int, lora: dict, work: Path, log, deadline: float,
              save_every: int) -> bool:
    """Train one stage from its checkpoint on; False when the time budget ran out first (checkpoint saved)."""
    params = trainables(model, lora)
    for p in model.parameters():
        p.requires_grad_(False)
    for p in params.values():
        p.requires_grad_(True)
    steps, peak = cfg[f"stage{stage}_steps"], cfg[f"lr{stage}"]
    optimizer = torch.optim.AdamW(list(params.values()), lr=peak, weight_decay=0.0)
    state = load_checkpoint(work, params, optimizer, stage) or {}
    if state.get("stage", 0) > stage or (state.get("stage") == stage and state["step"] >= steps):
        return True
    first = state["step"] if state.get("stage") == stage else 0
    history = state.get("history", {}).get(str(stage), []) if state.get("stage") == stage else []
    all_history = state.get("history", {})
    n_image = model.config.image_seq_length
    start, cpu_start = time.time(), time.process_time()
    for step in range(first, steps):
        for group in optimizer.param_groups:
            group["lr"] = learning_rate(step, steps, peak, cfg["warmup"])
        batch = make_batch(tokenizer, features, cfg, stage, step, n_image)
        logits = forward_from_features(model, batch["input_ids"], batch["attention_mask"], batch["features"])
        loss = torch.nn.functional.cross_entropy(logits[:, :-1].flatten(0, 1), batch["labels"][:, 1:].flatten())
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(list(params.values()), 1.0)
        optimizer.step()
        history.append(round(loss.item(), 4))
        done = step + 1 - first
        per_step = (time.time() - start) / done
        cpu_per_step = (time.process_time() - cpu_start) / done  # CPU seconds: the cost without other jobs' load
        log(f"stage {stage} step {step + 1}/{steps} loss {loss.item():.4f} tokens {batch['input_ids'].shape[1]} "
            f"{per_step:.2f} s/step (cpu {cpu_per_step:.2f} s) eta {per_step * (steps - step - 1) / 60:.1f} min")
        out_of_time = time.time() > deadline
        if (step + 1) % save_every == 0 or step + 1 == steps or out_of_time:
            all_history[str(stage)] = history
            save_checkpoint(work, params, optimizer, {"stage": stage, "step": step + 1, "history": all_history,
                                                      "seconds_per_step": {**state.get("seconds_per_step", {}),
                                                                           str(stage): round(per_step, 3)}})
        if out_of_time and step + 1 < steps:
            return False
    return True


def export(model, lora: dict, cfg: dict, out: Path, work: Path) -> None:
    """Write only what was trained: projector.safetensors, adapters.safetensors + adapters.json, training_log.json."""
    from safetensors.torch import save_file

    out.mkdir(parents=True, exist_ok=True)
    projector = {k: p.detach().contiguous() for k, p in model.model.multi_modal_projector.state_dict().items()}
    save_file(projector, str(out / smol_llava.PROJECTOR_FILE))
    adapters = {}
    for path, module in lora.items():
        adapters[f"{path}.lora_A"] = module.lora_A.detach().contiguous()
        adapters[f"{path}.lora_B"] = module.lora_B.detach().contiguous()
    save_file(adapters, str(out / smol_llava.ADAPTERS_FILE))
    (out / smol_llava.ADAPTER_CONFIG_FILE).write_text(json.dumps(
        {"rank": cfg["rank"], "alpha": cfg["alpha"], "targets": list(LORA_TARGETS)}, indent=1) + "\n")
    state = json.loads((work / "state.json").read_text())
    history = state["history"]
    (out / "training_log.json").write_text(json.dumps(
        {"config": cfg, "seconds_per_step": state.get("seconds_per_step"), "torch_threads": torch.get_num_threads(),
         "loss_every_25": {stage: [round(sum(h[i:i + 25]) / len(h[i:i + 25]), 4) for i in range(0, len(h), 25)]
                           for stage, h in history.items()}}, indent=1) + "\n")


def train(cfg: dict, out: Path, work: Path, minutes: float | None, save_every: int) -> bool:
    torch.manual_seed(cfg["seed"])
    work.mkdir(parents=True, exist_ok=True)
    with open(work / "progress.log", "a") as progress:

        def log(line: str) -> None:
            stamped = f"{time.strftime('%H:%M:%S')} {line}"
            print(stamped, flush=True)
            progress.write(stamped + "\n")
            progress.flush()

        return _train_logged(cfg, out, work, minutes, save_every, log)


def _train_logged(cfg: dict, out: Path, work: Path, minutes: float | None, save_every: int, log) -> bool:
    deadline = time.time() + minutes * 60 if minutes else math.inf
    model, processor = smol_llava.compose_from_dirs(packaged.dinov2_dir(), packaged.smollm2_dir())
    features = cached_features(model, processor, cfg, log)
    model.train()
    if not run_stage(model, processor.tokenizer, features, cfg, 1, {}, work, log, deadline, save_every):
        log("time budget spent in stage 1; run the same command again to resume")
        return False
    lora = attach_lora(model, cfg["rank"], cfg["alpha"], cfg["seed"])
    if not run_stage(model, processor.tokenizer, features, cfg, 2, lora, work, log, deadline, save_every):
        log("time budget spent in stage 2; run the same command again to resume")
        return False
    export(model.eval(), lora, cfg, out, work)
    log(f"trained files written to {out}")
    return True


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--smoke", action="store_true", help="a few steps of each stage into a temp dir")
    parser.add_argument("--out", type=Path, default=None, help="where the trained files go (default: here)")
    parser.add_argument("--work", type=Path, default=None, help="checkpoints and progress.log (default: cache)")
    parser.add_argument("--minutes", type=float, default=None, help="stop (resumably) after this many minutes")
    parser.add_argument("--stage1-steps", type=int, default=None)
    parser.add_argument("--stage2-steps", type=int, default=None)
    parser.add_argument("--save-every", type=int, default=25)
    parser.add_argument("--no-eval", action="store_true", help="skip evaluate.py after training")
    args = parser.parse_args(argv)
    cfg = dict(SMOKE if args.smoke else FULL)
    for stage in (1, 2):
        if getattr(args, f"stage{stage}_steps") is not None:
            cfg[f"stage{stage}_steps"] = getattr(args, f"stage{stage}_steps")
    out = args.out
    if cfg != FULL:
        out = out or Path(tempfile.mkdtemp(prefix="smol-llava-smoke-"))
        if out.resolve() == HERE:
            parser.error("a smoke or shortened run must not write the shipped model; pass another --out")
    out = out or HERE
    work = args.work or (Path(tempfile.mkdtemp(prefix="smol-llava-work-")) if args.smoke else
                         packaged.cache_dir() / "smol_llava" / f"run-seed{cfg['seed']}")
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "2")))
    if not train(cfg, out, work, args.minutes, args.save_every):
        return 0
    if not args.no_eval:
        local_module("evaluate").main(["--dir", str(out), "--limit", "12" if args.smoke else "600"])
    return 0


if __name__ == "__main__":
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    raise SystemExit(main())
