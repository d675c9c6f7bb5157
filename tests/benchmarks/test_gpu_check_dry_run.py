"""benchmarks/gpu_check.py cannot rot between GPU sessions: its dry run (CPU, tiny shapes, Triton interpreted)
runs every section here, and its tables must be complete with every correctness error under its tolerance.

The correctness numbers are independent checks: the Triton statistics against the dense reference, and a
tiny-llava trace through the Triton kernels against the CPU's own kernels. The dry run is one subprocess
(~1 min on 2 shared cores) so that TRITON_INTERPRET=1 is set before triton is first imported.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

# Only look for triton: importing it here, before tests/kernels set TRITON_INTERPRET=1, would fix its mode
# for the whole session and break the interpreted kernels of those tests.
if importlib.util.find_spec("triton") is None:
    pytest.skip("triton is not installed", allow_module_level=True)

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "benchmarks" / "gpu_check.py"


def _script():
    spec = importlib.util.spec_from_file_location("gpu_check", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("gpu_check", module)  # its dataclasses look their module up there
    spec.loader.exec_module(module)  # top level: standard library only
    return module


gpu_check = _script()


def _run(*args: str, timeout: int = 600) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    env.pop("OUT", None)
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True, env=env, cwd=ROOT,
                          timeout=timeout, check=False)


@pytest.fixture(scope="module")
def dry_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("gpu_check")
    done = _run("--dry-run", "--out", str(out))
    assert (out / "gpu_check.json").exists(), done.stderr[-3000:]
    return done, json.loads((out / "gpu_check.json").read_text()), (out / "gpu_check.md").read_text()


def test_dry_run_passes_every_section(dry_run):
    done, report, _ = dry_run
    sections = report["sections"]
    assert list(sections) == list(gpu_check.SECTIONS)
    failures = {name: s.get("traceback") or [r for r in s["rows"] if r.get("ok") is False]
                for name, s in sections.items() if not s["ok"]}
    assert not failures, failures
    assert done.returncode == 0 and report["ok"] and report["dry_run"], done.stderr[-3000:]


def test_correctness_table_is_complete_and_within_tolerance(dry_run):
    rows = dry_run[1]["sections"]["correctness"]["rows"]
    sizes = gpu_check.DRY
    cases = {"causal, top-8", "causal, left padding", "sliding window"}
    expected = {(case, dtype, n, "kernel") for case in cases for dtype in sizes.dtypes for n in sizes.correctness_n}
    expected |= {("causal, top-8", dtype, n, "SDPA forward") for dtype in sizes.dtypes for n in sizes.correctness_n}
    assert {(r["case"], r["dtype"], r["n"], r["lse"]) for r in rows} == expected
    for r in rows:
        wanted = {"key_mass", "region_mass", "entropy", "normaliser"} | ({"top_weight"} if "top-8" in r["case"] else set())
        assert set(r["errors"]) == wanted, r
        assert r["counts_equal"], r
        assert 0 <= r["worst"] <= 1.0, r  # every entry within atol + rtol |want| of the dense reference
    kernel_rows = [r for r in rows if r["lse"] == "kernel"]
    assert all((r["rtol"], r["atol"]) == gpu_check.KERNEL_TOLERANCE for r in kernel_rows)
    assert any(r["n"] > 1 and max(r["errors"].values()) > 0 for r in kernel_rows), "nothing was compared"


def test_timing_tables_are_complete(dry_run):
    sections = dry_run[1]["sections"]
    layer = sections["layer"]["rows"]
    for n in gpu_check.DRY.layer_n:
        configs = [r["config"] for r in layer if r["n"] == n]
        assert len(configs) == 4 and configs[0].endswith("(floor)"), configs
        assert all(r["seconds"] > 0 for r in layer if r["n"] == n)
    model = sections["model"]["rows"]
    assert {(r["model"], r["config"]) for r in model} == {
        (name, config) for name in gpu_check.DRY.models
        for config in ("plain SDPA forward (floor)", "workbench statistics capture")}
    for r in model:
        if r["config"] == "workbench statistics capture":  # every layer's statistics came from the Triton kernels
            layers = gpu_check.DRY.models[r["model"]]["num_hidden_layers"]
            assert r["kernels"] == {"triton": layers}, r


def test_llava_capture_on_the_triton_path_equals_the_cpu_capture(dry_run):
    rows = {r["what"]: r for r in dry_run[1]["sections"]["llava"]["rows"]}
    assert rows["tokens (prompt + 3 greedy)"]["ok"]
    kernels = rows["statistics kernels run"]
    assert kernels["ok"] and set(kernels["device_kernels"]) == {"text", "vision"}
    cpu_kernels = {name for counts in kernels["cpu_kernels"].values() for name in counts}
    assert cpu_kernels and "triton" not in cpu_kernels  # the reference came from the CPU's own kernels
    for stat in ("key_mass", "region_mass", "entropy", "normaliser", "key_count", "region_count",
                 "vision.key_mass", "vision.entropy"):
        assert rows[stat]["compared"] >= 1 and rows[stat]["worst"] <= 1.0, rows[stat]
    assert rows["key_mass"]["error"] > 0, "two different kernels should not agree to the last bit"


def test_markdown_has_every_table(dry_run):
    text = dry_run[2]
    for number, name in enumerate(gpu_check.SECTIONS, 1):
        assert f"## {gpu_check.TITLES[name]}" in text and gpu_check.TITLES[name].startswith(f"{number}.")
    assert "FAILED" not in text and "| NO |" not in text
    assert sum(line.startswith("|---") for line in text.splitlines()) == len(gpu_check.SECTIONS)


def test_full_sizes_are_the_issues():
    """The GPU run measures what it promises: n up to 16,384 with non-multiples of the 64 x 64 blocks, three
    dtypes, GQA, LLaVA-7B's layer at 1k/8k/32k, whole models at n = 8,192 through the default kernel choice."""
    full = gpu_check.FULL
    assert full.device == "cuda" and set(full.dtypes) == {"float32", "float16", "bfloat16"}
    assert min(full.correctness_n) == 1 and max(full.correctness_n) == 16384
    assert any(n % 64 for n in full.correctness_n if n > 64)
    assert all(heads > kv for heads, kv in full.correctness_heads.values())
    assert (full.layer_heads, full.layer_d, full.layer_n) == (32, 128, (1024, 8192, 32768))
    assert full.model_n == 8192 and full.capture_kernel == "auto"
    assert full.models[gpu_check.LLAMA_7B]["num_attention_heads"] == 32
    assert full.models[gpu_check.SMOLLM2]["num_key_value_heads"] == 3


def test_errors_measure_against_the_tolerance():
    import torch

    want = torch.tensor([1.0, 0.0, float("nan"), float("-inf")])
    got = torch.tensor([1.0 + 2e-5, 5e-7, float("nan"), float("-inf")])
    error, worst = gpu_check.tolerance_errors(got, want, (1e-5, 1e-6))
    assert error == pytest.approx(2e-5, rel=1e-2) and worst == pytest.approx(2e-5 / 1.1e-5, rel=1e-2)
    assert gpu_check.tolerance_errors(torch.tensor([float("nan")]), torch.tensor([0.0]), (1e-5, 1e-6))[1] == float("inf")
    assert gpu_check.tolerance_errors(torch.zeros(2), torch.zeros(3), (1e-5, 1e-6))[1] == float("inf")


def test_without_cuda_the_full_run_is_refused_in_one_line(tmp_path):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA: the full run would start")
    done = _run("--out", str(tmp_path), timeout=120)
    assert done.returncode == 2 and done.stderr.strip().splitlines() == [
        "error: no CUDA device; use --dry-run for the CPU check"]
    assert not list(tmp_path.iterdir())
