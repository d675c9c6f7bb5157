"""The Triton statistics kernels and whole-model capture on a CUDA GPU, checked and timed in one run.

Four sections, each one table (printed, and written to OUT/gpu_check.md; every number in OUT/gpu_check.json):

    correctness  Triton statistics vs the dense reference on seeded random q, k: causal (with top-8),
                 causal with left key padding (rows that see no key), sliding window; GQA; fp32, fp16, bf16;
                 n from 1 to 16,384 including non-multiples of the 64 x 64 blocks; the kernels' own lse pass,
                 and (causal) the lse of the SDPA forward. Max absolute error per statistic.
    layer        one causal layer at LLaVA-7B's shape (32 heads, d_head 128, bf16), n = 1k, 8k, 32k: the SDPA
                 flash forward alone vs forward + Triton statistics (with the forward's lse, and with the
                 kernels' own lse pass as whole-model capture runs today) vs HF eager attention keeping the
                 maps (run only where its estimated memory fits). Time and peak memory as ratios.
    model        a whole model built from config at SmolLM2-135M's and at Llama-7B's (LLaVA-7B's language model)
                 shape, bf16, random seeded weights, n = 8,192: plain SDPA forward vs workbench statistics
                 capture (`Tracer.trace`, kernel "auto"). Time and peak memory as ratios.
    llava        the tiny-llava fixture (CLIP tower + Llama, fp32) traced on the device with the Triton kernels
                 vs the same trace on the CPU (the CPU's own kernels): every stored tensor, and the greedy tokens.

Needs only PyTorch with CUDA, Triton and transformers (with its tokenizers and pillow): the project's code is
imported from this checkout without an install, and no weights are read. A section that fails records its
error and the others still run; the files are rewritten after every section, so a run cut short keeps what it
finished. Exit status 0 only when every section ran and every check passed.

    python benchmarks/gpu_check.py --out $OUT                # on the GPU (an H200: a few minutes)
    python benchmarks/gpu_check.py --dry-run --out /tmp/gc   # CPU, tiny shapes, Triton interpreted (~1 min)

--dry-run runs every code path on the CPU: tiny shapes, TRITON_INTERPRET=1 for the Triton kernels, SDPA's CPU
kernels where the GPU would use flash, tiny model configs of the same head layouts; its times mean nothing.
"""

from __future__ import annotations

import argparse
import importlib.abc
import importlib.util
import json
import math
import os
import re
import sys
import time
import traceback
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SECTIONS = ("correctness", "layer", "model", "llava")

# A value passes when |got - want| <= atol + rtol * |want| (as torch.testing.assert_close); "worst / tol" is the
# largest |got - want| / (atol + rtol * |want|), so <= 1 passes. (rtol, atol) pairs, from docs/kernels.md.
KERNEL_TOLERANCE = (1e-5, 1e-6)  # the kernels' own lse pass: same bf16/fp16 values, fp32 accumulation
# With the lse of the SDPA forward: a half-precision forward rounds inside its kernel (Z and entropy off by ~1e-4).
FORWARD_LSE_TOLERANCE = {"float32": (1e-5, 1e-6), "float16": (3e-4, 3e-4), "bfloat16": (3e-4, 3e-4)}
CAPTURE_TOLERANCE = (1e-4, 1e-5)  # a whole fp32 model on the GPU vs the CPU: different BLAS summation orders
STATISTICS = ("key_mass", "region_mass", "entropy", "normaliser", "top_weight")


@dataclass(frozen=True)
class Sizes:
    """Every shape a run uses: the GPU's real sizes, or the dry run's tiny ones."""

    device: str
    dtypes: tuple[str, ...]  # of the correctness section (the interpreter computes fp16 like bf16: in fp32)
    correctness_n: tuple[int, ...]
    correctness_heads: dict[int, tuple[int, int]]  # n threshold -> (heads, kv heads) for n up to it
    correctness_d: int
    layer_n: tuple[int, ...]
    layer_heads: int
    layer_d: int
    layer_repeat: int
    eager_limit_gib: float
    models: dict[str, dict]
    model_n: int
    model_repeat: int
    capture_kernel: str  # "auto" picks Triton on CUDA; the dry run asks for it by name (interpreted)


SMOLLM2 = "SmolLM2-135M"
LLAMA_7B = "Llama-7B (LLaVA-7B LM)"
LLAMA_SHAPES = {
    SMOLLM2: {"hidden_size": 576, "intermediate_size": 1536, "num_hidden_layers": 30, "num_attention_heads": 9,
              "num_key_value_heads": 3, "vocab_size": 49152, "tie_word_embeddings": True},
    LLAMA_7B: {"hidden_size": 4096, "intermediate_size": 11008, "num_hidden_layers": 32, "num_attention_heads": 32,
               "num_key_value_heads": 32, "vocab_size": 32000},
}
# The dry run keeps each model's head layout (GQA 3:1, MHA) at a few dozen dimensions and two layers.
TINY_SHAPES = {
    SMOLLM2: {**LLAMA_SHAPES[SMOLLM2], "hidden_size": 48, "intermediate_size": 96, "num_hidden_layers": 2,
              "num_attention_heads": 3, "num_key_value_heads": 1, "vocab_size": 512},
    LLAMA_7B: {**LLAMA_SHAPES[LLAMA_7B], "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
               "num_attention_heads": 2, "num_key_value_heads": 2, "vocab_size": 512},
}
FULL = Sizes(device="cuda", dtypes=("float32", "float16", "bfloat16"), correctness_n=(1, 63, 1000, 4097, 16384),
             correctness_heads={4097: (8, 2), 16384: (4, 1)}, correctness_d=128, layer_n=(1024, 8192, 32768),
             layer_heads=32, layer_d=128, layer_repeat=10, eager_limit_gib=64.0, models=LLAMA_SHAPES,
             model_n=8192, model_repeat=3, capture_kernel="auto")
DRY = Sizes(device="cpu", dtypes=("float32", "bfloat16"), correctness_n=(1, 33), correctness_heads={33: (2, 1)},
            correctness_d=32, layer_n=(16, 40), layer_heads=2, layer_d=32, layer_repeat=1, eager_limit_gib=1.0,
            models=TINY_SHAPES, model_n=40, model_repeat=1, capture_kernel="triton")


# ------------------------------------------------------------------------------------------------ imports
class _CheckoutFinder(importlib.abc.MetaPathFinder):
    """Imports `workbench` and its mapped packages (`workbench.kernels` -> kernels/, ...) from this checkout, as
    pyproject.toml's package-dir declares them: the device machine carries the code but has no install."""

    def __init__(self):
        import tomllib

        table = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-dir"]
        self.folders = {name: ROOT / folder for name, folder in table.items()}

    def find_spec(self, name, path=None, target=None):
        folder = self.folders.get(name)
        if folder is None:
            return None
        return importlib.util.spec_from_file_location(name, folder / "__init__.py",
                                                      submodule_search_locations=[str(folder)])


def _import_checkout() -> None:
    sys.meta_path.insert(0, _CheckoutFinder())
    sys.path.insert(0, str(ROOT / "benchmarks"))  # the shared benchmark helpers, also when imported


# ------------------------------------------------------------------------------------------------ helpers
def tolerance_errors(got, want, tolerance) -> tuple[float, float]:
    """(max |got - want|, worst |got - want| / (atol + rtol |want|)) over all entries. Non-finite entries must
    match exactly (NaN with NaN: e.g. a log-probability with no predicting row); anything else is inf."""
    import torch

    got, want = got.detach().float().cpu(), want.detach().float().cpu()
    if got.shape != want.shape:
        return float("inf"), float("inf")
    finite = torch.isfinite(got) & torch.isfinite(want)
    same = (got == want) | (torch.isnan(got) & torch.isnan(want))
    if not (finite | same).all():
        return float("inf"), float("inf")
    if not finite.any():
        return 0.0, 0.0
    rtol, atol = tolerance
    diff = (got[finite] - want[finite]).abs()
    return float(diff.max()), float((diff / (atol + rtol * want[finite].abs())).max())


def _free(device: str) -> None:
    import gc

    import torch

    gc.collect()
    if device == "cuda":
        torch.cuda.empty_cache()


def _regions(n: int, device: str):
    """Three contiguous key regions, as in a LLaVA prompt: system | image | text."""
    import torch

    regions = torch.zeros(n, dtype=torch.long, device=device)
    regions[n // 8: n // 2] = 1
    regions[n // 2:] = 2
    return regions


# ------------------------------------------------------------------------------------------------ 1: correctness
def _mask_cases(n: int, device: str):
    """(name, batch, MaskSpec, top_k) of the correctness section for n keys."""
    import torch
    from workbench.kernels import MaskSpec

    padding = torch.ones(2, n, dtype=torch.bool, device=device)
    padding[0, : n // 4] = False  # left padding: the first rows of batch 0 see no key at all under causal
    return [("causal, top-8", 1, MaskSpec(causal=True), 8),
            ("causal, left padding", 2, MaskSpec(causal=True, key_padding=padding), 0),
            ("sliding window", 1, MaskSpec(causal=True, sliding_window=n // 3 + 1), 0)]


def correctness(sizes: Sizes) -> list[dict]:
    rows = []
    for n in sizes.correctness_n:
        heads = next(h for limit, h in sorted(sizes.correctness_heads.items()) if n <= limit)
        for dtype_name in sizes.dtypes:
            for case in _mask_cases(n, sizes.device):
                rows += _correctness_rows(sizes, n, heads, dtype_name, *case)
                _free(sizes.device)
            worst = max(r["worst"] for r in rows if r["n"] == n and r["dtype"] == dtype_name)
            print(f"  correctness n={n} {dtype_name}: worst / tol {worst:.2f}", file=sys.stderr, flush=True)
    return rows


def _correctness_rows(sizes: Sizes, n: int, heads: tuple[int, int], dtype_name: str, name: str, batch: int, mask,
                      top_k: int) -> list[dict]:
    """One mask case: the Triton statistics with their own lse (and, causal only, with the SDPA forward's)."""
    import torch
    from workbench.kernels import attention_statistics, sdpa_with_log_normaliser

    device, d_head, dtype = sizes.device, sizes.correctness_d, getattr(torch, dtype_name)
    torch.manual_seed(n)
    query = (torch.randn(batch, heads[0], n, d_head, device=device) * 1.5).to(dtype)
    key = (torch.randn(batch, heads[1], n, d_head, device=device) * 1.5).to(dtype)
    kw = {"scaling": d_head ** -0.5, "mask": mask, "key_regions": _regions(n, device), "n_regions": 3, "top_k": top_k}
    want = attention_statistics(query, key, implementation="dense", **kw)
    sources = [("kernel", None, KERNEL_TOLERANCE)]
    if mask.key_padding is None and mask.sliding_window is None:
        _, lse = sdpa_with_log_normaliser(query, key, torch.randn_like(key), scaling=kw["scaling"], is_causal=True)
        sources.append(("SDPA forward", lse, FORWARD_LSE_TOLERANCE[dtype_name]))
    rows = []
    for source, lse, tolerance in sources:
        got = attention_statistics(query, key, implementation="triton", log_normaliser=lse, **kw)
        counts_equal = (torch.equal(got.key_count.cpu(), want.key_count.cpu())
                        and torch.equal(got.region_count.cpu(), want.region_count.cpu()))
        row = {"case": name, "dtype": dtype_name, "n": n, "heads": f"{heads[0]}/{heads[1]}", "batch": batch,
               "lse": source, "rtol": tolerance[0], "atol": tolerance[1], "errors": {}, "worst": 0.0,
               "counts_equal": counts_equal}
        for stat in STATISTICS:
            if getattr(want, stat) is not None:
                row["errors"][stat], worst = tolerance_errors(getattr(got, stat), getattr(want, stat), tolerance)
                row["worst"] = max(row["worst"], worst)
        row["ok"] = counts_equal and row["worst"] <= 1.0
        rows.append(row)
    return rows


def correctness_table(rows: list[dict]) -> list[str]:
    lines = ["| case | dtype | n | heads/kv | lse | " + " | ".join(STATISTICS) + " | counts | worst / tol | ok |",
             "|---|---|---:|---|---|" + "---:|" * len(STATISTICS) + "---|---:|---|"]
    for r in rows:
        cells = [f"{r['errors'][s]:.1e}" if s in r["errors"] else "-" for s in STATISTICS]
        lines.append(f"| {r['case']} | {r['dtype']} | {r['n']} | {r['heads']} | {r['lse']} | " + " | ".join(cells)
                     + f" | {'equal' if r['counts_equal'] else 'DIFFER'} | {r['worst']:.2f} | {'yes' if r['ok'] else 'NO'} |")
    return lines


# ------------------------------------------------------------------------------------------------ 2: one layer
def layer(sizes: Sizes) -> list[dict]:
    rows = []
    for n in sizes.layer_n:
        rows += _layer_rows(sizes, n)
        _free(sizes.device)
    return rows


def _flash(device: str):
    """The floor runs the flash kernel on CUDA; the CPU has its own fused SDPA kernel."""
    import contextlib

    if device != "cuda":
        return contextlib.nullcontext()
    from torch.nn.attention import SDPBackend, sdpa_kernel

    return sdpa_kernel(SDPBackend.FLASH_ATTENTION)


def _layer_rows(sizes: Sizes, n: int) -> list[dict]:
    from types import SimpleNamespace

    import torch
    import torch.nn.functional as F
    from kernels_memory import measure
    from transformers.models.llama.modeling_llama import eager_attention_forward
    from workbench.kernels import MaskSpec, attention_statistics, sdpa_with_log_normaliser

    device, heads, d_head, dtype = sizes.device, sizes.layer_heads, sizes.layer_d, torch.bfloat16
    scaling = d_head ** -0.5
    torch.manual_seed(n)
    q, k, v = (torch.randn(1, heads, n, d_head, device=device, dtype=dtype) for _ in range(3))
    kw = {"scaling": scaling, "mask": MaskSpec(causal=True), "key_regions": _regions(n, device), "n_regions": 3,
          "implementation": "triton"}
    inputs = 3 * q.numel() * q.element_size() + n * 8

    def floor():
        with _flash(device):
            return F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=scaling)

    def with_forward_lse():
        out, lse = sdpa_with_log_normaliser(q, k, v, scaling=scaling, is_causal=True)
        return out, attention_statistics(q, k, log_normaliser=lse, **kw)

    def with_own_lse():
        return floor(), attention_statistics(q, k, **kw)

    configs = [("SDPA flash forward (floor)", floor),
               ("forward + Triton statistics, lse from the forward", with_forward_lse),
               ("forward + Triton statistics, own lse pass (capture today)", with_own_lse)]
    rows = []
    eager = "HF eager attention, maps kept"
    eager_bytes = 10 * heads * n * n + 2 * n * n  # bf16 scores, fp32 softmax, bf16 weights; the additive mask
    if eager_bytes <= sizes.eager_limit_gib * 2**30:
        mask = torch.full((n, n), float("-inf"), device=device).triu(1)[None, None].to(dtype)
        module = SimpleNamespace(num_key_value_groups=1, training=False)
        configs.append((eager, lambda: eager_attention_forward(module, q, k, v, mask, scaling=scaling)))
    else:
        rows.append({"n": n, "config": eager, "estimate_gib": (eager_bytes + inputs) / 2**30})
    for name, fn in configs:
        seconds, extra, tensors = measure(fn, device, sizes.layer_repeat)
        rows.append({"n": n, "config": name, "seconds": seconds, "extra_mib": max(extra, 0) / 2**20,
                     "tensors_mib": tensors / 2**20, "total_mib": (max(extra, 0) + inputs) / 2**20})
    return rows


def layer_table(rows: list[dict]) -> list[str]:
    lines = ["| n | computation | seconds | time / floor | peak extra MiB | peak incl. q, k, v MiB | memory / floor |",
             "|---:|---|---:|---:|---:|---:|---:|"]
    floors = {r["n"]: r for r in rows if r["config"].endswith("(floor)")}
    for r in rows:
        if "estimate_gib" in r:
            lines.append(f"| {r['n']} | {r['config']} | not run | - | - | ~{r['estimate_gib'] * 1024:,.0f} (est.) | "
                         f"~{r['estimate_gib'] * 1024 / floors[r['n']]['total_mib']:,.0f} (est.) |")
            continue
        f = floors[r["n"]]
        lines.append(f"| {r['n']} | {r['config']} | {r['seconds']:.5f} | {r['seconds'] / f['seconds']:.2f} | "
                     f"{r['extra_mib']:,.1f} | {r['total_mib']:,.1f} | {r['total_mib'] / f['total_mib']:.2f} |")
    return lines


# ------------------------------------------------------------------------------------------------ 3: whole models
def _random_llama(name: str, shape: dict, n: int, device: str, dtype):
    """A LoadedModel at `shape` with seeded random weights, built on `device` in `dtype` (no weights read)."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from workbench.models.byte_tokenizer import byte_level_tokenizer
    from workbench.models.loaded import LoadedModel

    tokenizer = byte_level_tokenizer()
    config = LlamaConfig(**shape, max_position_embeddings=max(n, 2048), bos_token_id=tokenizer.bos_token_id,
                         eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    config.architectures = ["LlamaForCausalLM"]
    torch.manual_seed(0)
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)  # built in bf16 on the device: a 7B model never exists in fp32
    try:
        with torch.device(device):
            model = LlamaForCausalLM(config).eval()
    finally:
        torch.set_default_dtype(previous)
    return LoadedModel(f"random {name}", model, tokenizer, "causal", f"random weights at {name}'s shape")


def model(sizes: Sizes) -> list[dict]:
    rows = []
    for name, shape in sizes.models.items():
        rows += _model_rows(sizes, name, shape)
        _free(sizes.device)
    return rows


def _model_rows(sizes: Sizes, name: str, shape: dict) -> list[dict]:
    import torch
    from attention_stats import text_of_length
    from kernels_memory import measure

    from workbench.capture import Tracer
    from workbench.capture.backends.hf import MAX_PROMPT_LOGITS

    device, n = sizes.device, sizes.model_n
    loaded = _random_llama(name, shape, n, device, torch.bfloat16)
    prompt = text_of_length(loaded.tokenizer, n)
    ids = loaded.tokenizer(prompt, return_tensors="pt")["input_ids"].to(device)
    keep = 0 if n * shape["vocab_size"] <= MAX_PROMPT_LOGITS else 1  # as trace() does
    tracer = Tracer.open(loaded)
    kernels: dict[str, int] = {}

    def floor():
        loaded.model.set_attn_implementation("sdpa")
        with torch.inference_mode():
            loaded.model(input_ids=ids, use_cache=True, logits_to_keep=keep)

    def capture():
        trace = tracer.trace(prompt, raw=True, max_new_tokens=0, max_length=n, kernel=sizes.capture_kernel)
        kernels.update(trace.meta["capture"]["kernels_run"].get("text", {}))

    weights = sum(p.numel() * p.element_size() for p in loaded.model.parameters())
    rows = []
    for config, fn in (("plain SDPA forward (floor)", floor), ("workbench statistics capture", capture)):
        seconds, extra, _ = measure(fn, device, sizes.model_repeat)
        rows.append({"model": name, "n": n, "config": config, "seconds": seconds, "extra_gib": max(extra, 0) / 2**30,
                     "total_gib": (max(extra, 0) + weights) / 2**30, "kernels": dict(kernels)})
    return rows


def model_table(rows: list[dict]) -> list[str]:
    lines = [("| model (random weights) | n | configuration | seconds | time / floor | peak extra GiB | "
              "peak incl. weights GiB | memory / floor | statistics kernels run |"),
             "|---|---:|---|---:|---:|---:|---:|---:|---|"]
    floors = {r["model"]: r for r in rows if r["config"].endswith("(floor)")}
    for r in rows:
        f = floors[r["model"]]
        kernels = ", ".join(f"{k} x{v}" for k, v in r["kernels"].items()) or "-"
        lines.append(f"| {r['model']} | {r['n']} | {r['config']} | {r['seconds']:.3f} | "
                     f"{r['seconds'] / f['seconds']:.2f} | {r['extra_gib']:.2f} | {r['total_gib']:.2f} | "
                     f"{r['total_gib'] / f['total_gib']:.2f} | {kernels} |")
    return lines


# ------------------------------------------------------------------------------------------------ 4: tiny LLaVA
def llava(sizes: Sizes) -> list[dict]:
    import numpy as np
    from PIL import Image

    import workbench

    pixels = np.random.default_rng(0).integers(0, 256, size=(40, 48, 3), dtype=np.uint8)
    image = Image.fromarray(pixels, "RGB")
    prompt = "What is in the picture? Answer in one word."
    reference = workbench.trace("tiny-llava", prompt, image, max_new_tokens=3)  # CPU, its default kernels
    on_device = workbench.trace("tiny-llava", prompt, image, max_new_tokens=3, device=sizes.device, kernel="triton")
    ran = {stack: dict(c) for stack, c in on_device.meta["capture"]["kernels_run"].items()}
    cpu_ran = {stack: dict(c) for stack, c in reference.meta["capture"]["kernels_run"].items()}
    same_tokens = [t.id for t in on_device.tokens] == [t.id for t in reference.tokens]
    rows = [{"what": "tokens (prompt + 3 greedy)", "compared": len(reference.tokens), "error": 0.0, "worst": 0.0,
             "ok": same_tokens, "note": "equal" if same_tokens else "DIFFER"},
            {"what": "statistics kernels run", "compared": 0, "error": 0.0, "worst": 0.0,
             "ok": all(set(c) == {"triton"} for c in ran.values()), "note": f"device {ran}; CPU {cpu_ran}",
             "device_kernels": ran, "cpu_kernels": cpu_ran}]
    return rows + _compare_traces(on_device, reference)


def _compare_traces(got, want) -> list[dict]:
    """One row per stored quantity (all layers together): integers must be equal, floats within CAPTURE_TOLERANCE."""
    import torch

    names = want.tensor_names()
    rows = []
    unmatched = sorted(set(names) ^ set(got.tensor_names()))
    if unmatched:
        rows.append({"what": "tensor names", "compared": len(names), "error": float("inf"), "worst": float("inf"),
                     "ok": False, "note": f"only in one trace: {unmatched[:6]}"})
    groups: dict[str, list[str]] = {}
    for name in names:
        if got.has(name):
            groups.setdefault(re.sub(r"layer_\d+\.", "", name), []).append(name)
    for group, members in sorted(groups.items()):
        error = worst = 0.0
        for name in members:
            g, w = got.tensor(name), want.tensor(name)
            if w.is_floating_point():
                e, r = tolerance_errors(g, w, CAPTURE_TOLERANCE)
            else:
                e = r = 0.0 if g.shape == w.shape and torch.equal(g, w) else float("inf")
            error, worst = max(error, e), max(worst, r)
        rows.append({"what": group, "compared": len(members), "error": error, "worst": worst, "ok": worst <= 1.0,
                     "note": ""})
    return rows


def llava_table(rows: list[dict]) -> list[str]:
    lines = ["| tensor (all layers) | tensors | max abs diff | worst / tol | ok | note |", "|---|---:|---:|---:|---|---|"]
    for r in rows:
        lines.append(f"| {r['what']} | {r['compared']} | {r['error']:.1e} | {r['worst']:.2f} | "
                     f"{'yes' if r['ok'] else 'NO'} | {r['note']} |")
    return lines


# ------------------------------------------------------------------------------------------------ driver
RUNNERS = {"correctness": (correctness, correctness_table), "layer": (layer, layer_table),
           "model": (model, model_table), "llava": (llava, llava_table)}
TITLES = {"correctness": "1. Triton statistics vs the dense reference (max absolute error per statistic)",
          "layer": "2. One layer at LLaVA-7B's shape (32 heads, d_head 128, bf16, causal, 3 regions)",
          "model": "3. Whole model from config (bf16, random weights): capture vs plain SDPA forward",
          "llava": "4. tiny-llava traced on the device (Triton) vs on the CPU"}


def _section_ok(name: str, result: dict) -> bool:
    if result.get("error"):
        return False
    rows = result["rows"]
    return all(r["ok"] for r in rows) if name in ("correctness", "llava") else bool(rows)


def _strict(value):
    """Strict JSON: non-finite floats (a failed comparison) as the strings "inf" / "nan"."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, dict):
        return {str(k): _strict(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_strict(v) for v in value]
    return value


def report(results: dict, header: list[str]) -> str:
    lines = list(header)
    for name, result in results.items():
        lines += ["", f"## {TITLES[name]}", "", f"Section time: {result['seconds']:.1f} s", ""]
        if result.get("error"):
            lines.append(f"FAILED: {result['error']}")
        if result.get("rows"):
            lines += RUNNERS[name][1](result["rows"])
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path(os.environ.get("OUT") or "out/gpu_check"),
                        help="folder for gpu_check.md and gpu_check.json (default: $OUT, else out/gpu_check)")
    parser.add_argument("--dry-run", action="store_true", help="CPU, tiny shapes, Triton interpreted")
    parser.add_argument("--sections", nargs="+", choices=SECTIONS, default=list(SECTIONS))
    args = parser.parse_args()
    if args.dry_run:
        os.environ["TRITON_INTERPRET"] = "1"  # read when triton is first imported, which comes later
    _import_checkout()
    import torch

    sizes = DRY if args.dry_run else FULL
    if sizes.device == "cuda" and not torch.cuda.is_available():
        print("error: no CUDA device; use --dry-run for the CPU check", file=sys.stderr)
        return 2
    torch.backends.cuda.matmul.allow_tf32 = False  # the fp32 dense reference must be IEEE fp32
    import transformers
    from kernels_memory import machine

    try:
        import triton

        versions = f"triton {triton.__version__}, transformers {transformers.__version__}"
    except ImportError:
        versions = f"no triton, transformers {transformers.__version__}"
    args.out.mkdir(parents=True, exist_ok=True)
    header = ["# GPU check (`benchmarks/gpu_check.py`)", "",
              f"Machine: {machine()}; {versions}; mode {'dry run (CPU, Triton interpreted)' if args.dry_run else 'GPU'}",
              f"Command: python benchmarks/gpu_check.py {' '.join(sys.argv[1:])}",
              (f"Tolerances (rtol, atol): kernel lse {KERNEL_TOLERANCE}, SDPA forward lse {FORWARD_LSE_TOLERANCE}, "
               f"capture device vs CPU {CAPTURE_TOLERANCE}; worst / tol <= 1 passes")]
    results: dict[str, dict] = {}
    for name in args.sections:
        start = time.perf_counter()
        try:
            results[name] = {"rows": RUNNERS[name][0](sizes)}
        except Exception as error:  # noqa: BLE001 (one failing section must not cost the others their device time)
            results[name] = {"rows": [], "error": f"{type(error).__name__}: {error}"[:400],
                             "traceback": traceback.format_exc()}
        results[name]["seconds"] = time.perf_counter() - start
        results[name]["ok"] = _section_ok(name, results[name])
        text = report(results, header)
        (args.out / "gpu_check.md").write_text(text)
        summary = {"header": header, "dry_run": args.dry_run, "sections": results,
                   "ok": all(r["ok"] for r in results.values())}
        (args.out / "gpu_check.json").write_text(json.dumps(_strict(summary), indent=1, allow_nan=False))
        print(f"[{name}: {results[name]['seconds']:.1f} s, {'ok' if results[name]['ok'] else 'FAILED'}]",
              file=sys.stderr, flush=True)
    print(text, flush=True)
    return 0 if all(r["ok"] for r in results.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
