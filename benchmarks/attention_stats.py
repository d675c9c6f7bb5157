"""Whole-model attention capture: wall time and peak memory as ratios to a plain SDPA forward.

For each model and sequence length n, side by side in one run, each configuration in a fresh subprocess
(so peak RSS values are separable):

    floor    plain forward, transformers' SDPA attention, no capture (use_cache and logits_to_keep as capture)
    capture  `workbench.trace(...)` in statistics mode (no maps): on CPU the one-pass kernel (layer outputs and
             per-layer statistics from one computation of the scores), else SDPA outputs + a statistics pass
    eager    HF eager attention with output_attentions=True (every layer's [head, n, n] maps kept)
    lens     TransformerLens 4.x TransformerBridge.run_with_cache, cache restricted to `*.attn.hook_pattern`

Models: SmolLM2-135M-Instruct (real weights; dynamic RoPE scaling past its 8,192 trained positions), a
GPT-2-small-shaped model (12 layers, 12 heads, d_model 768, random weights, positions up to the largest n) and
Gemma 3 270M (real weights; 15 of its 18 layers attend through a 512-token sliding window, up to 32,768
positions). Inputs: the repository's Markdown docs, repeated and cut to exactly n tokens (SmolLM2 tokenizer;
GPT-2 uses the same ids; Gemma 3 its own tokenizer). A configuration whose estimated peak memory exceeds --memory-limit-gb is not run; its estimate
is printed instead. Times are single forwards (best of --repeat, runs interleaved), wall and process CPU
seconds (steadier when other jobs share the cores); peak RSS is VmHWM during the measured call, reset after
loading and a short warm-up. The peak RSS columns are the fastest run's; the "worst peak" columns are the
largest peak of all repeats of each configuration, and their ratio is to the floor's largest peak, so a memory
target holds in every run, not only the fastest.

    python benchmarks/attention_stats.py                                  # everything (hours on 2 cores)
    python benchmarks/attention_stats.py --sizes 512 2048 --models gpt2-small --threads 1
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

from workbench.peak_rss import reset_peak, status_kib

ROOT = Path(__file__).resolve().parents[1]
MODELS = ("smollm2", "gpt2-small", "gemma3-270m")
CONFIGS = ("floor", "capture", "eager", "lens")
SIZES = (512, 2048, 8192, 32768)
SHAPES = {"smollm2": {"layers": 30, "heads": 9, "vocab": 49152},
          "gpt2-small": {"layers": 12, "heads": 12, "vocab": 50257},
          "gemma3-270m": {"layers": 18, "heads": 4, "vocab": 262144}}
LABELS = {"floor": "SDPA forward (floor)", "capture": "workbench statistics capture",
          "eager": "HF eager, output_attentions", "lens": "TransformerLens bridge, hook_pattern cache"}


# ---------------------------------------------------------------------------------------------- worker side


def _load(model: str, n: int):
    import torch

    from workbench.models import load_model
    from workbench.models.loaded import LoadedModel

    if model == "smollm2":
        return load_model("smollm2", rope_scaling="dynamic", max_length=n) if n > 8192 else load_model("smollm2")
    if model == "gemma3-270m":
        return load_model("gemma3-270m")
    from transformers import GPT2Config, GPT2LMHeadModel

    tokenizer = load_model("smollm2").tokenizer  # 49,152 ids, all inside GPT-2's 50,257
    config = GPT2Config(n_layer=12, n_head=12, n_embd=768, n_positions=max(n, 1024), vocab_size=50257)
    config.architectures = ["GPT2LMHeadModel"]
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        hf_model = GPT2LMHeadModel(config).eval()
    return LoadedModel("gpt2-small-random", hf_model, tokenizer, "causal", "GPT2Config(12 layers, 12 heads, 768)")


def text_of_length(tokenizer, n: int) -> str:
    """Repository docs, repeated and cut so that the tokenizer gives exactly n tokens."""
    source = "".join(p.read_text(encoding="utf-8") for p in sorted((ROOT / "docs").rglob("*.md")))
    source += (ROOT / "README.md").read_text(encoding="utf-8")
    ids = tokenizer(source)["input_ids"]
    ids = (ids * (n // len(ids) + 2))[: n + 16]
    cut = n
    for _ in range(20):
        text = tokenizer.decode(ids[:cut])
        count = len(tokenizer(text)["input_ids"])
        if count == n:
            return text
        cut += n - count
    raise RuntimeError(f"could not cut the docs to exactly {n} tokens")


def _runner(config: str, loaded, n: int):
    """A zero-argument callable running `config` on an n-token input."""
    import workbench
    from workbench.capture.backends.hf import MAX_PROMPT_LOGITS

    prompt = text_of_length(loaded.tokenizer, n)
    ids = loaded.tokenizer(prompt, return_tensors="pt")["input_ids"]
    keep = 0 if ids.shape[1] * loaded.text_config.vocab_size <= MAX_PROMPT_LOGITS else 1  # as trace() does
    model = loaded.model
    if config == "floor":
        model.set_attn_implementation("sdpa")
        return lambda: model(input_ids=ids, use_cache=True, logits_to_keep=keep)
    if config == "capture":
        return lambda: workbench.trace(loaded, prompt, raw=True, max_new_tokens=0, max_length=max(n, 64))
    if config == "eager":
        model.set_attn_implementation("eager")
        return lambda: model(input_ids=ids, use_cache=True, logits_to_keep=keep, output_attentions=True)
    if config == "lens":
        bridge = _bridge(loaded)
        return lambda: bridge.run_with_cache(ids, names_filter=lambda name: name.endswith("attn.hook_pattern"))
    raise ValueError(config)


def _bridge(loaded):
    import tempfile
    import warnings

    from transformers import AutoTokenizer

    with tempfile.TemporaryDirectory() as folder, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from transformer_lens.model_bridge import TransformerBridge

        loaded.tokenizer.save_pretrained(folder)
        tokenizer = AutoTokenizer.from_pretrained(folder)
        return TransformerBridge.boot_transformers(loaded.name, hf_model=loaded.model, tokenizer=tokenizer,
                                                   device="cpu")


def worker(model: str, config: str, n: int, threads: int) -> dict:
    import warnings

    import torch

    warnings.simplefilter("ignore")
    torch.set_num_threads(threads)
    loaded = _load(model, n)
    with torch.inference_mode():
        _runner(config, loaded, 64)()  # warm-up: touches every weight page, initialises lazy state
        run = _runner(config, loaded, n)
        reset_peak()
        before_rss = status_kib("VmRSS")
        load_before = os.getloadavg()[0]
        cpu_before = time.process_time()
        start = time.perf_counter()
        result = run()
        wall = time.perf_counter() - start
        cpu = time.process_time() - cpu_before
        peak = status_kib("VmHWM")
    del result
    return {"wall_s": wall, "cpu_s": cpu, "peak_rss_gib": peak / 2**20, "before_rss_gib": before_rss / 2**20,
            "load": (load_before + os.getloadavg()[0]) / 2, "threads": torch.get_num_threads()}


# ---------------------------------------------------------------------------------------------- driver side
def estimate_gib(model: str, config: str, n: int, floor_peak_gib: float) -> float:
    """Peak RSS of a map-materialising configuration: the floor plus every layer's fp32 maps, the last
    layer's scores and softmax, the fp32 causal mask and (lens) the full logits the bridge computes."""
    shape = SHAPES[model]
    maps = 4 * shape["heads"] * n * n
    extra = (shape["layers"] + 2) * maps + 4 * n * n
    if config == "lens":
        extra += 4 * n * shape["vocab"]
    return floor_peak_gib + extra / 2**30


def machine() -> str:
    cpu = platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    with open("/proc/meminfo") as f:
        total = int(next(line.split()[1] for line in f if line.startswith("MemTotal"))) / 2**20
    import torch
    import transformers

    return (f"{cpu}, {os.cpu_count()} logical cores, {total:.0f} GiB RAM, no GPU; torch {torch.__version__}, "
            f"transformers {transformers.__version__}")


def measure(model: str, config: str, n: int, threads: int) -> dict:
    command = [sys.executable, __file__, "--worker", model, config, str(n), "--threads", str(threads)]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_NO_ADVISORY_WARNINGS": "1"}
    done = subprocess.run(command, capture_output=True, text=True, env=env, cwd=ROOT, check=False)
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    if done.returncode or not lines:
        tail = (done.stderr or done.stdout).strip().splitlines()[-3:]
        return {"error": f"exit {done.returncode}: {' | '.join(tail)}"}
    return json.loads(lines[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=list(SIZES))
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=MODELS)
    parser.add_argument("--configs", nargs="+", default=list(CONFIGS), choices=CONFIGS)
    parser.add_argument("--threads", type=int, default=2, help="torch intra-op threads in every configuration")
    parser.add_argument("--repeat", type=int, default=1, help="runs per configuration (fresh process each); best")
    parser.add_argument("--repeat-up-to", type=int, default=2048, help="repeat only sizes up to this n")
    parser.add_argument("--memory-limit-gb", type=float, default=16.0,
                        help="do not run configurations estimated above this peak RSS")
    parser.add_argument("--worker", nargs=3, metavar=("MODEL", "CONFIG", "N"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        model, config, n = args.worker
        print(json.dumps(worker(model, config, int(n), args.threads)), flush=True)
        return

    print(f"Machine: {machine()}; {args.threads} torch thread(s); load average at start "
          f"{os.getloadavg()[0]:.1f} (2 cores shared with other work)", flush=True)
    print(f"Command: python benchmarks/attention_stats.py {' '.join(sys.argv[1:])}\n", flush=True)
    rows = []
    for model in args.models:
        for n in args.sizes:
            best: dict[str, dict] = {}
            peaks: dict[str, list[float]] = {}
            for _ in range(args.repeat if n <= args.repeat_up_to else 1):
                for config in ["floor"] + [c for c in args.configs if c != "floor"]:
                    floor = best.get("floor", {})
                    if config in ("eager", "lens") and "peak_rss_gib" in floor:
                        estimate = estimate_gib(model, config, n, floor["peak_rss_gib"])
                        if estimate > args.memory_limit_gb:
                            best[config] = {"estimate_gib": estimate}
                            continue
                    result = measure(model, config, n, args.threads)
                    print(f"  {model} n={n} {config}: {json.dumps(result)}", file=sys.stderr, flush=True)
                    if "peak_rss_gib" in result:
                        peaks.setdefault(config, []).append(result["peak_rss_gib"])
                    previous = best.get(config)
                    if previous is None or "wall_s" not in previous or result.get("wall_s", 1e30) < previous["wall_s"]:
                        best[config] = result
            for config, seen in peaks.items():
                best[config] = {**best[config], "worst_peak_rss_gib": max(seen), "runs": len(seen)}
            rows.append((model, n, best))
    print(table(rows, args.configs))


def table(rows, configs) -> str:
    header = ("| model | n | configuration | wall s | time / floor | peak RSS GiB | peak RSS / floor | CPU s "
              "| CPU / floor | load avg | worst peak RSS GiB (runs) | worst peak / floor's worst |")
    lines = [header, "|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for model, n, best in rows:
        floor = best.get("floor", {})
        for config in ["floor"] + [c for c in configs if c != "floor"]:
            r = best.get(config, {})
            if "estimate_gib" in r:
                ratio = f"~{r['estimate_gib'] / floor['peak_rss_gib']:.1f} (est.)"
                cells = ["not run", "-", f"~{r['estimate_gib']:,.1f} (est.)", ratio, "-", "-", "-", "-", "-"]
            elif "error" in r or "wall_s" not in r:
                cells = [r.get("error", "missing")[:80], "-", "-", "-", "-", "-", "-", "-", "-"]
            else:
                cells = [f"{r['wall_s']:.1f}", f"{r['wall_s'] / floor['wall_s']:.2f}" if "wall_s" in floor else "-",
                         f"{r['peak_rss_gib']:.2f}",
                         f"{r['peak_rss_gib'] / floor['peak_rss_gib']:.2f}" if "peak_rss_gib" in floor else "-",
                         f"{r['cpu_s']:.1f}", f"{r['cpu_s'] / floor['cpu_s']:.2f}" if "cpu_s" in floor else "-",
                         f"{r['load']:.1f}", f"{r['worst_peak_rss_gib']:.2f} ({r['runs']})",
                         f"{r['worst_peak_rss_gib'] / floor['worst_peak_rss_gib']:.2f}"
                         if "worst_peak_rss_gib" in floor else "-"]
            lines.append(f"| {model} | {n} | {LABELS[config]} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
