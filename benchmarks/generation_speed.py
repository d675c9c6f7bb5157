"""Greedy generation with statistics capture against plain transformers `generate`, as time ratios.

Side by side in one run, each configuration in a fresh subprocess, runs interleaved, for each thread count:

    plain     `model.generate(input_ids, max_new_tokens=N, do_sample=False)`, transformers' SDPA attention
    capture   `Tracer.trace(prompt, max_new_tokens=N, raw=True)`: every layer's statistics of the prompt forward
              and of each KV-cache decode step (statistics mode, no maps; not saved)
    before    the same capture from another checkout of the workbench (`--before DIR`, e.g. a `git worktree` of an
              older commit), imported through PYTHONPATH with the same venv

Model: SmolLM2-135M-Instruct (real weights). Prompt: the repository's Markdown docs cut to exactly
--prompt-tokens tokens, given raw (no chat template), so the model continues prose and rarely stops early;
the number of tokens each run generated is printed, and the ratio is of time per generated token when they
differ. Each worker loads the model, warms up with a 4-token generation, then times one generation (wall and
process CPU seconds). Best and worst of --repeat are printed; the ratios use the best of each. On a shared
machine the CPU-second ratio is the steadier one (with one thread it is the work done; wall time also counts
waiting for the cores).

    python benchmarks/generation_speed.py --threads 1 2 --repeat 2
    python benchmarks/generation_speed.py --before /tmp/wt-before --threads 1

The editable install maps workbench.kernels, .app and .probes to this checkout's kernels/, app/ and probes/, so
a --before checkout needs those three as links inside its workbench/ folder, or its capture would run this
checkout's kernels:

    git worktree add /tmp/wt-before COMMIT && cd /tmp/wt-before/workbench && \
        ln -s ../kernels kernels && ln -s ../app app && ln -s ../probes probes
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ("plain", "capture")


def prompt_ids(tokenizer, n: int):
    """The first n token ids of the repository's Markdown docs (README first)."""
    import torch

    text = "\n\n".join(p.read_text(encoding="utf-8") for p in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))])
    ids = tokenizer(text, add_special_tokens=False)["input_ids"][:n]
    return torch.tensor([ids])


def worker(config: str, threads: int, prompt_tokens: int, new_tokens: int) -> dict:
    import torch

    from workbench.capture import Tracer
    from workbench.models import load_model

    torch.set_num_threads(threads)
    loaded = load_model("smollm2")
    ids = prompt_ids(loaded.tokenizer, prompt_tokens)
    text = loaded.tokenizer.decode(ids[0])
    if config == "plain":
        def run(count: int) -> int:
            with torch.inference_mode():
                out = loaded.model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=count,
                                            do_sample=False)
            return out.shape[1] - ids.shape[1]
    else:
        tracer = Tracer.open(loaded)

        def run(count: int) -> int:
            trace = tracer.trace(text, max_new_tokens=count, raw=True)
            return trace.generation["end"] - trace.generation["start"]
    run(4)
    wall, cpu = time.perf_counter(), time.process_time()
    generated = run(new_tokens)
    return {"seconds": time.perf_counter() - wall, "cpu_seconds": time.process_time() - cpu, "new_tokens": generated}


def measure(config: str, threads: int, args) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    if config == "before":
        env["PYTHONPATH"] = str(Path(args.before).resolve())
    command = [sys.executable, str(Path(__file__).resolve()), "--worker", "capture" if config == "before" else config,
               str(threads), str(args.prompt_tokens), str(args.new_tokens)]
    folder = Path(args.before) if config == "before" else ROOT
    done = subprocess.run(command, env=env, capture_output=True, text=True, check=False, cwd=str(folder))
    if done.returncode:
        raise SystemExit(f"{config} worker failed:\n{done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--repeat", type=int, default=2, help="runs per configuration (fresh process each)")
    parser.add_argument("--prompt-tokens", type=int, default=200)
    parser.add_argument("--new-tokens", type=int, default=128)
    parser.add_argument("--before", help="another workbench checkout to time as 'before' (imported via PYTHONPATH)")
    parser.add_argument("--worker", nargs=4, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        config, threads, prompt_tokens, new_tokens = args.worker
        print(json.dumps(worker(config, int(threads), int(prompt_tokens), int(new_tokens))))
        return
    configs = CONFIGS + (("before",) if args.before else ())
    print(f"load before: {os.getloadavg()[0]:.2f} (1-min average, {os.cpu_count()} cores)", flush=True)
    runs: dict[tuple[str, int], list[dict]] = {}
    for _ in range(args.repeat):
        for threads in args.threads:
            for config in configs:
                result = measure(config, threads, args)
                runs.setdefault((config, threads), []).append(result)
                print(f"  {config:8s} {threads} thread(s): {result['seconds']:.2f} s, {result['new_tokens']} tokens, "
                      f"load {os.getloadavg()[0]:.2f}", flush=True)
    print(f"load after: {os.getloadavg()[0]:.2f}\n")
    print("| threads | configuration | tokens | best s | worst s | tok/s (best) | best CPU s | wall per token / plain "
          "| CPU per token / plain |")
    print("|---|---|---|---|---|---|---|---|---|")
    for threads in args.threads:
        plain = min(runs[("plain", threads)], key=lambda r: r["seconds"])
        plain_cpu = min(runs[("plain", threads)], key=lambda r: r["cpu_seconds"])
        for config in configs:
            results = runs[(config, threads)]
            best = min(results, key=lambda r: r["seconds"])
            best_cpu = min(results, key=lambda r: r["cpu_seconds"])
            worst = max(r["seconds"] for r in results)
            ratio = (best["seconds"] / best["new_tokens"]) / (plain["seconds"] / plain["new_tokens"])
            cpu_ratio = (best_cpu["cpu_seconds"] / best_cpu["new_tokens"]) / (plain_cpu["cpu_seconds"] /
                                                                              plain_cpu["new_tokens"])
            print(f"| {threads} | {config} | {best['new_tokens']} | {best['seconds']:.2f} | {worst:.2f} | "
                  f"{best['new_tokens'] / best['seconds']:.1f} | {best_cpu['cpu_seconds']:.2f} | {ratio:.2f}x | "
                  f"{cpu_ratio:.2f}x |")


if __name__ == "__main__":
    main()
