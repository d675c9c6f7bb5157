"""Many short prompts: batched capture against a batched plain forward of the same batch size, as throughput ratios.

Side by side in one process, one torch thread, the same prompts (chat template applied, as `workbench trace
--prompts` does), each configuration timed --repeat times, interleaved, best time used:

    plain loop       one `model(input_ids)` per prompt (SDPA, no cache, all logits)
    plain batched    one left-padded forward per --batch-size prompts (attention mask and per-row position ids)
    capture loop     `Tracer.trace(prompt)` per prompt (statistics of every layer, predictions; not saved)
    capture batched  `Tracer.trace_batch(prompts)` per --batch-size prompts (the same Traces; not saved)
    + saving         capture batched, each Trace saved as a bundle into a temporary folder

Ratios are throughputs (prompts per second) relative to "plain batched": >= 0.9 for capture batched and >= 0.8
with saving is the target. Both wall time and process CPU time are timed: with one thread the CPU time is the
work done, the steadier measure on a shared machine (wall time also counts waiting for a core). Load average
(`os.getloadavg`) is printed before and after.

    python benchmarks/short_prompts.py [--model smollm2] [--n 64] [--batch-size 16] [--repeat 2]
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

SUBJECTS = ["the cat on the mat", "why the sky is blue", "a lighthouse keeper", "twelve times seven",
            "the capital of France", "three colours of the rainbow", "a village by the sea", "good morning in French"]


def prompts(n: int) -> list[str]:
    return [f"Write one short sentence about {SUBJECTS[i % len(SUBJECTS)]} (variant {i})." for i in range(n)]


def plain_inputs(tracer, texts: list[str]):
    """The token ids [1, query_pos] the tracer feeds for each prompt (same template, same tokens)."""
    from workbench.capture.inputs import prepare_input

    return [prepare_input(tracer.loaded, text, None).input_ids for text in texts]


def plain_loop(model, ids: list) -> None:
    for row in ids:
        model(input_ids=row, use_cache=False)


def plain_batched(model, ids: list, batch_size: int) -> None:
    import torch

    for start in range(0, len(ids), batch_size):
        chunk = ids[start:start + batch_size]
        longest = max(row.shape[1] for row in chunk)
        input_ids = torch.zeros((len(chunk), longest), dtype=torch.long)
        mask = torch.zeros((len(chunk), longest), dtype=torch.long)
        for b, row in enumerate(chunk):
            input_ids[b, longest - row.shape[1]:] = row[0]
            mask[b, longest - row.shape[1]:] = 1
        model(input_ids=input_ids, attention_mask=mask, position_ids=(mask.cumsum(-1) - 1).clamp(min=0),
              use_cache=False)


def capture_loop(tracer, texts: list[str]) -> None:
    for text in texts:
        tracer.trace(text)


def capture_batched(tracer, texts: list[str], batch_size: int, folder: Path | None = None) -> None:
    for start in range(0, len(texts), batch_size):
        traces = tracer.trace_batch(texts[start:start + batch_size])
        if folder is not None:
            for offset, trace in enumerate(traces):
                trace.save(folder / f"p{start + offset:04d}.wbtrace")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2")
    parser.add_argument("--n", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--skip-loops", action="store_true", help="time only the batched configurations")
    args = parser.parse_args()
    import torch

    from workbench.capture import Tracer
    from workbench.models import load_model

    torch.set_num_threads(1)
    load_before = os.getloadavg()
    tracer = Tracer.open(load_model(args.model))
    model = tracer.loaded.model
    texts = prompts(args.n)
    ids = plain_inputs(tracer, texts)
    lengths = [row.shape[1] for row in ids]
    with tempfile.TemporaryDirectory() as scratch:
        runs = {
            "plain batched": lambda: plain_batched(model, ids, args.batch_size),
            "capture batched": lambda: capture_batched(tracer, texts, args.batch_size),
            "capture batched + saving": lambda: capture_batched(tracer, texts, args.batch_size, _fresh(scratch)),
        }
        if not args.skip_loops:
            runs = {"plain loop": lambda: plain_loop(model, ids), **runs,
                    "capture loop": lambda: capture_loop(tracer, texts)}
        with torch.inference_mode():
            plain_batched(model, ids[:2], 2)  # warm-up: first-call costs (kernel load, allocator)
        capture_batched(tracer, texts[:2], 2)
        times: dict[str, list[float]] = {name: [] for name in runs}
        cpu: dict[str, list[float]] = {name: [] for name in runs}
        for _ in range(args.repeat):
            for name, run in runs.items():
                started, started_cpu = time.perf_counter(), time.process_time()
                with torch.inference_mode():
                    run()
                times[name].append(time.perf_counter() - started)
                cpu[name].append(time.process_time() - started_cpu)
    load_after = os.getloadavg()
    best = {name: min(values) for name, values in times.items()}
    best_cpu = {name: min(values) for name, values in cpu.items()}
    print(f"# {args.model}: {args.n} prompts of {min(lengths)}-{max(lengths)} tokens (mean "
          f"{sum(lengths) / len(lengths):.0f}), batch {args.batch_size}, 1 thread, best of {args.repeat}; "
          f"{platform.machine()} {os.cpu_count()} cores, load {load_before[0]:.1f} before, {load_after[0]:.1f} after")
    print(f"{'configuration':26} {'wall s':>7} {'worst':>7} {'ratio':>6} {'CPU s':>7} {'worst':>7} {'ratio':>6}   "
          "(ratio: throughput vs plain batched)")
    for name, values in times.items():
        print(f"{name:26} {best[name]:7.2f} {max(values):7.2f} {best['plain batched'] / best[name]:6.2f} "
              f"{best_cpu[name]:7.2f} {max(cpu[name]):7.2f} {best_cpu['plain batched'] / best_cpu[name]:6.2f}")


def _fresh(scratch: str) -> Path:
    return Path(tempfile.mkdtemp(dir=scratch))


if __name__ == "__main__":
    main()
