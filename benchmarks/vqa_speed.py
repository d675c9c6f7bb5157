"""One VQA on a scenes image: plain transformers `generate` against workbench capture, side by side, as time ratios.

The default model is tiny (llava-scenes: a 52-token input of 49 image tokens and a short question, 2 answer tokens),
so the fixed per-call costs of a capture (input labelling, plan checks, buffers, predictions, trace assembly)
weigh as much as the model's own work; this benchmark measures them. `--model smol-llava` runs the same job at
real scale (DINOv2 ViT-S/14 tower, SmolLM2-135M language model, 30 layers). In one process, runs interleaved:

    generate `model.generate(**inputs, max_new_tokens=N, do_sample=False)` on inputs the processor made once
             (transformers' SDPA attention): the model's work alone
    plain    the image read from its file and `processor(text, image)` on the chat-templated question, then the
             same `generate`: what a user runs for one VQA, and what a capture does besides capturing
    capture  `Tracer.trace(question, image_path, max_new_tokens=N)`: the same input, every layer's statistics of
             the prompt forward and the decode steps, next-token predictions, the Trace (not saved)
    save     the capture above, then `Trace.save` of its bundle (into a temporary folder)

Each configuration runs --warmup times, then --repeat times interleaved; best and median milliseconds (wall
and process CPU) and the ratios of the medians to plain's and to generate's are printed. A capture runs one
forward more than `generate` (it feeds the last generated token too, so that token's attention row is
recorded): at 2 new tokens that is 3 forwards against 2, and the decode step alone is ~0.3x of `generate`. The question is the first of
data/scenes/questions.jsonl unless --question picks another index. `--profile capture` prints cProfile's
top functions of --repeat captures instead.

    python benchmarks/vqa_speed.py --threads 1 --repeat 200
    python benchmarks/vqa_speed.py --profile capture --repeat 100
    python benchmarks/vqa_speed.py --model smol-llava --threads 1 --repeat 20 --warmup 2
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SCENES = ROOT / "data" / "scenes"


def runners(model: str, question: dict, new_tokens: int, folder: Path):
    import torch
    from PIL import Image

    from workbench.capture import Tracer
    from workbench.capture.inputs import prepare_input
    from workbench.models import load_model

    loaded = load_model(model)
    tracer = Tracer.open(loaded)
    image_path = SCENES / question["image"]
    text = prepare_input(loaded, question["question"], image_path).meta["text"]
    placeholder = loaded.processor.image_token
    # the chat-templated text before the processor expanded the image placeholder
    rendered = text.replace(placeholder * text.count(placeholder), placeholder, 1)
    generated = {}
    with Image.open(image_path) as image:
        prepared = loaded.processor(text=rendered, images=image.convert("RGB"), return_tensors="pt")

    def generate() -> None:
        with torch.inference_mode():
            loaded.model.generate(**prepared, max_new_tokens=new_tokens, do_sample=False)

    def plain() -> int:
        with Image.open(image_path) as image:
            inputs = loaded.processor(text=rendered, images=image.convert("RGB"), return_tensors="pt")
        with torch.inference_mode():
            out = loaded.model.generate(**inputs, max_new_tokens=new_tokens, do_sample=False)
        generated["plain"] = out[0, inputs["input_ids"].shape[1]:].tolist()
        return inputs["input_ids"].shape[1]

    def capture():
        trace = tracer.trace(question["question"], image_path, max_new_tokens=new_tokens)
        generated["capture"] = [token.id for token in trace.tokens[trace.generation["start"]:]]
        return trace

    saves = iter(range(10**9))

    def save() -> None:
        capture().save(folder / f"t{next(saves)}.wbtrace")

    return {"generate": generate, "plain": plain, "capture": capture, "save": save}, generated


def _timed(call) -> tuple[float, float]:
    wall, cpu = time.perf_counter(), time.process_time()
    call()
    return (time.perf_counter() - wall) * 1e3, (time.process_time() - cpu) * 1e3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="llava-scenes", help="a VLM of the registry (llava-scenes, smol-llava)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeat", type=int, default=100)
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--new-tokens", type=int, default=2)
    parser.add_argument("--question", type=int, default=0, help="index into data/scenes/questions.jsonl")
    parser.add_argument("--profile", choices=("generate", "plain", "capture", "save"))
    args = parser.parse_args()
    import torch

    from workbench.datasets.scene_questions import read_questions

    torch.set_num_threads(args.threads)
    question = read_questions(SCENES)[args.question]
    with tempfile.TemporaryDirectory() as folder:
        run, generated = runners(args.model, question, args.new_tokens, Path(folder))
        if args.profile:
            import cProfile
            import pstats

            for _ in range(args.warmup):
                run[args.profile]()
            profiler = cProfile.Profile()
            profiler.enable()
            for _ in range(args.repeat):
                run[args.profile]()
            profiler.disable()
            pstats.Stats(profiler).sort_stats("cumulative").print_stats(45)
            return
        for _ in range(args.warmup):
            for call in run.values():
                call()
        assert generated["plain"] == generated["capture"], generated  # the same answer both ways
        times: dict[str, list[tuple[float, float]]] = {name: [] for name in run}
        load = os.getloadavg()[0]
        for _ in range(args.repeat):
            for name, call in run.items():
                times[name].append(_timed(call))
    print(f"{args.model}, question {args.question} ({question['question']!r}), {args.new_tokens} new tokens, "
          f"{args.threads} thread(s), {args.repeat} runs each interleaved; load {load:.2f} -> "
          f"{os.getloadavg()[0]:.2f} ({os.cpu_count()} cores)\n")
    print("| configuration | best ms | median ms | median CPU ms | / plain (wall, CPU) | / generate (wall, CPU) |")
    print("|---|---:|---:|---:|---:|---:|")
    medians = {name: (statistics.median(w for w, _ in seen), statistics.median(c for _, c in seen))
               for name, seen in times.items()}
    for name, seen in times.items():
        (wall, cpu), plain, generate = medians[name], medians["plain"], medians["generate"]
        print(f"| {name} | {min(w for w, _ in seen):.2f} | {wall:.2f} | {cpu:.2f} | {wall / plain[0]:.2f}x, "
              f"{cpu / plain[1]:.2f}x | {wall / generate[0]:.2f}x, {cpu / generate[1]:.2f}x |")


if __name__ == "__main__":
    main()
