"""Inputs per second of `workbench sweep`: local executor versus Ray on this machine, side by side in one run.

For each configuration the same inputs are swept into a fresh folder. Two rates are reported:
- end to end: inputs / wall time of run_sweep, including model loading (and Ray actor start-up);
- steady: inputs committed after the first part / time from the first to the last commit (the rate a long
  sweep approaches). Ratios are to the first configuration (local, all cores).
The Ray cluster (num_cpus = this machine's cores) is started once, before the timed runs; its start-up time is
printed separately.

    python benchmarks/sweep_throughput.py [--model smollm2] [--n 32] [--batch-size 4] [--new-tokens 0]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

PROMPTS = [
    "The cat sat on the mat and looked at the door.", "Why is the sky blue? Explain briefly.",
    "Write one sentence about a lighthouse keeper who finds a message in a bottle.",
    "What is 12 times 7? Answer with the number only.", "Paris is the capital of France, and Rome is the capital of",
    "List three colours of the rainbow.", "Once upon a time, in a small village by the sea,",
    "Translate to French: good morning, how are you?",
]


def _inputs(folder: Path, n: int) -> Path:
    path = folder / "inputs.jsonl"
    with open(path, "w") as handle:
        for i in range(n):
            handle.write(json.dumps({"prompt": f"{PROMPTS[i % len(PROMPTS)]} (variant {i})"}) + "\n")
    return path


def _run(model, data, out, **options) -> dict:
    from workbench.scale import run_sweep

    stamps: list[tuple[float, int]] = []
    started = time.perf_counter()
    result = run_sweep(model, data, out, progress=lambda done, total, traced: stamps.append(
        (time.perf_counter(), traced)), **options)
    wall = time.perf_counter() - started
    commits = [(t, n) for t, n in stamps if n]
    steady = None
    if len(commits) >= 2:
        (t0, n0), (t1, n1) = commits[0], commits[-1]
        steady = (n1 - n0) / (t1 - t0) if t1 > t0 else None
    return {"end_to_end": result.n_traced / wall, "steady": steady, "wall": wall}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2")
    parser.add_argument("--n", type=int, default=32)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--new-tokens", type=int, default=0)
    args = parser.parse_args()
    cores = os.cpu_count() or 1
    import ray

    import workbench

    workbench.load_model(args.model)  # one-time conversions (SmolLM2's GGUF) happen outside the timings
    started = time.perf_counter()
    ray.init(num_cpus=cores, include_dashboard=False, object_store_memory=256 * 1024 * 1024, logging_level="ERROR",
             log_to_driver=False, runtime_env={"env_vars": {"HF_HUB_OFFLINE": "1"}})
    ray_start = time.perf_counter() - started
    configurations = [
        ("local, 1 replica x all cores", dict(executor="local")),
        ("local, 1 replica x 1 thread", dict(executor="local", threads=1)),
        (f"ray, {cores} replicas x 1 CPU", dict(executor="ray", workers=cores, cpus_per_worker=1)),
        (f"ray, 1 replica x {cores} CPUs", dict(executor="ray", workers=1, cpus_per_worker=cores)),
    ]
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        data = _inputs(Path(folder), args.n)
        # Untimed warm-up in this process (first-call costs: attention registration, allocator, imports).
        (Path(folder) / "warm").mkdir()
        _run(args.model, _inputs(Path(folder) / "warm", 2), Path(folder) / "warm-out", batch_size=1,
             max_new_tokens=args.new_tokens)
        for index, (label, options) in enumerate(configurations):
            rows.append((label, _run(args.model, data, Path(folder) / f"out{index}", batch_size=args.batch_size,
                                     max_new_tokens=args.new_tokens, **options)))
    ray.shutdown()
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"# sweep throughput: {args.model}, {args.n} inputs, batch {args.batch_size}, {args.new_tokens} new tokens; "
          f"{platform.machine()} {cores} cores, load average {load:.1f} at the end; Ray start-up {ray_start:.1f} s")
    print(f"{'configuration':34} {'inputs/s e2e':>13} {'ratio':>6} {'inputs/s steady':>16} {'ratio':>6} {'wall s':>7}")
    base = rows[0][1]
    for label, row in rows:
        steady = f"{row['steady']:.3f}" if row["steady"] else "-"
        steady_ratio = f"{row['steady'] / base['steady']:.2f}" if row["steady"] and base["steady"] else "-"
        print(f"{label:34} {row['end_to_end']:13.3f} {row['end_to_end'] / base['end_to_end']:6.2f} {steady:>16} "
              f"{steady_ratio:>6} {row['wall']:7.1f}")


if __name__ == "__main__":
    main()
