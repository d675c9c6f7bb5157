"""Writing and reading trace bundles: save time, load time, and the cost of reading one layer lazily.

One SmolLM2-135M-Instruct statistics trace (raw prompt, no generation) per prompt length, captured once per
worker; then, in that process:

    save         `Trace.save` of the whole bundle (best and median of --repeat, wall and process CPU ms)
    load         `workbench.load` (manifest, every shard header; no tensor data)
    verify       `workbench.load(verify=True)`: the same plus every file's checksum
    layer        `Trace.layer(L // 2)` of the loaded bundle: every tensor of one layer, read lazily
    layer RSS    new resident memory at the peak of that read (VmHWM after minus VmRSS before, MiB)

The `layer` rows are repeated on a copy of the trace whose text stack is stretched to --stretch times the
layers (layer i holds layer i mod L's tensors): reading one layer lazily must not cost more when the bundle
holds more layers. Prompt: the repository's Markdown docs cut to exactly n tokens.

`--before DIR` runs the same worker from another checkout (e.g. a `git worktree` of an older commit, with
kernels/, app/ and probes/ linked inside its workbench/ folder as benchmarks/generation_speed.py describes),
imported through PYTHONPATH with the same venv, so both layouts are measured in one run.

    python benchmarks/bundle_io.py --sizes 36 2048 --repeat 7
    python benchmarks/bundle_io.py --before /tmp/wt-before
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _timed(call) -> tuple[float, float, object]:
    wall, cpu = time.perf_counter(), time.process_time()
    value = call()
    return (time.perf_counter() - wall) * 1e3, (time.process_time() - cpu) * 1e3, value


def _stretched(trace, factor: int):
    """The trace with factor x its text layers (layer i = a copy of layer i mod L), everything else unchanged."""
    import copy
    import re

    from workbench.traces.trace import MemoryTensors, Trace

    layers = trace.n_layers()
    tensors = {}
    for name in trace.tensor_names():
        match = re.match(r"^layer_(\d+)\.(.+)$", name)
        if match is None:
            tensors[name] = (trace.tensor(name), trace.axes(name))
            continue
        for copy_index in range(factor):
            tensors[f"layer_{int(match[1]) + copy_index * layers:02d}.{match[2]}"] = (
                trace.tensor(name).clone(), trace.axes(name))
    meta = copy.deepcopy(trace.meta)
    meta["dims"]["stacks"]["text"]["layers"] = layers * factor
    meta.get("capture", {}).get("kernels_run", {}).pop("text", None)
    return Trace(meta=meta, tokens=trace.tokens, tensors=MemoryTensors(tensors))


def _read_layer(path: Path, layer: int) -> dict:
    import workbench
    from workbench.peak_rss import reset_peak, status_kib

    loaded = workbench.load(path)
    loaded.layer(0)  # first read pays for imports
    loaded = workbench.load(path)
    before = status_kib("VmRSS")
    reset_peak()
    wall, cpu, stats = _timed(lambda: loaded.layer(layer))
    peak = status_kib("VmHWM") - before
    return {"layer_ms": wall, "layer_cpu_ms": cpu, "layer_rss_mib": peak / 1024,
            "layer_mib": sum(t.numel() * t.element_size() for t in stats.values()) / 2**20}


def worker(n: int, repeat: int, stretch: int) -> dict:
    import torch

    import workbench
    from workbench.capture import Tracer
    from workbench.models import load_model

    torch.set_num_threads(1)
    loaded = load_model("smollm2")
    text = "\n\n".join(p.read_text(encoding="utf-8") for p in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))])
    prompt = loaded.tokenizer.decode(loaded.tokenizer(text, add_special_tokens=False)["input_ids"][:n])
    trace = Tracer.open(loaded).trace(prompt, raw=True)
    folder = Path(tempfile.mkdtemp(prefix="bundle-io-"))
    try:
        saves = [_timed(lambda i=i: trace.save(folder / f"b{i}.wbtrace"))[:2] for i in range(repeat)]
        bundle = folder / "b0.wbtrace"
        files = sorted(p.name for p in (bundle / "tensors").iterdir())
        loads = [_timed(lambda: workbench.load(bundle))[:2] for _ in range(repeat)]
        verifies = [_timed(lambda: workbench.load(bundle, verify=True))[:2] for _ in range(repeat)]
        layers = trace.n_layers()
        result = {"n": len(trace.tokens), "layers": layers, "files": len(files),
                  "bytes": sum(p.stat().st_size for p in (bundle / "tensors").iterdir()),
                  "save_ms": sorted(saves), "load_ms": sorted(loads), "verify_ms": sorted(verifies),
                  "read": {layers: _read_layer(bundle, layers // 2)}}
        stretched = _stretched(trace, stretch)
        stretched.save(folder / "stretched.wbtrace")
        result["read"][layers * stretch] = _read_layer(folder / "stretched.wbtrace", layers // 2)
        return result
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def measure(n: int, args, checkout: str | None) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    if checkout:
        env["PYTHONPATH"] = str(Path(checkout).resolve())
    command = [sys.executable, str(Path(__file__).resolve()), "--worker", str(n), str(args.repeat), str(args.stretch)]
    done = subprocess.run(command, env=env, capture_output=True, text=True, check=False, cwd=checkout or str(ROOT))
    if done.returncode:
        raise SystemExit(f"worker failed:\n{done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[36, 2048], help="prompt lengths in tokens")
    parser.add_argument("--repeat", type=int, default=7, help="saves and loads timed per worker")
    parser.add_argument("--stretch", type=int, default=4, help="layer multiple of the stretched copy")
    parser.add_argument("--before", help="another workbench checkout to time as 'before' (imported via PYTHONPATH)")
    parser.add_argument("--worker", nargs=3, type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        n, repeat, stretch = args.worker
        print(json.dumps(worker(n, repeat, stretch)))
        return
    print(f"load before: {os.getloadavg()[0]:.2f} (1-min average, {os.cpu_count()} cores)", flush=True)
    rows = []
    for n in args.sizes:
        for label, checkout in (("before", args.before), ("now", None)) if args.before else (("now", None),):
            rows.append((label, measure(n, args, checkout)))
            print(f"  {label} n={n} done, load {os.getloadavg()[0]:.2f}", flush=True)
    print(f"load after: {os.getloadavg()[0]:.2f}\n")
    print("| code | n | files | MB | save ms best / median (CPU best) | load ms best | load+verify ms best |")
    print("|---|---|---|---|---|---|---|")
    for label, r in rows:
        mid = len(r["save_ms"]) // 2
        print(f"| {label} | {r['n']} | {r['files']} | {r['bytes'] / 1e6:.2f} | {r['save_ms'][0][0]:.1f} / "
              f"{r['save_ms'][mid][0]:.1f} ({min(c for _, c in r['save_ms']):.1f}) | {r['load_ms'][0][0]:.1f} | "
              f"{r['verify_ms'][0][0]:.1f} |")
    print("\n| code | n | layers in bundle | read one layer ms (CPU) | its tensors MiB | peak new RSS MiB |")
    print("|---|---|---|---|---|---|")
    for label, r in rows:
        for layers, read in r["read"].items():
            print(f"| {label} | {r['n']} | {layers} | {read['layer_ms']:.2f} ({read['layer_cpu_ms']:.2f}) | "
                  f"{read['layer_mib']:.2f} | {read['layer_rss_mib']:.2f} |")


if __name__ == "__main__":
    main()
