"""The memory guard: full maps estimated above the budget are refused before any forward, with one line that
says what to do; statistics-only traces and maps that fit are unaffected."""

from __future__ import annotations

import pytest
import torch

import workbench
from tests.workbench.cli.cli_inprocess import run_cli
from workbench.capture.memory import map_budget, parse_size
from workbench.errors import InputError, ResourceError
from workbench.threads import torch_threads


@pytest.fixture(autouse=True)
def _one_thread():
    with torch_threads(1):
        yield


def test_sizes_parse():
    assert parse_size("2GB") == 2 * 1024**3 and parse_size("512 MiB") == 512 * 1024**2 and parse_size(4096) == 4096
    assert parse_size("1.5k") == 1536 and parse_size("unlimited") is None
    with pytest.raises(InputError, match="2GB"):
        parse_size("lots")


def test_default_budget_is_half_the_available_ram(monkeypatch):
    monkeypatch.delenv("WORKBENCH_MAX_MAP_MEMORY", raising=False)
    with open("/proc/meminfo") as handle:  # independent read of what the kernel reports
        available = next(int(line.split()[1]) * 1024 for line in handle if line.startswith("MemAvailable:"))
    budget, source = map_budget()
    assert abs(budget - available / 2) < 0.1 * available and "RAM available" in source
    monkeypatch.setenv("WORKBENCH_MAX_MAP_MEMORY", "3MB")
    assert map_budget() == (3 * 1024**2, "WORKBENCH_MAX_MAP_MEMORY")


def test_maps_above_the_budget_are_refused_with_the_exact_estimate(models):
    loaded = models("tiny-llama")  # 3 layers x 6 heads
    stats_only = workbench.trace(loaded, "Memory guard", max_new_tokens=2, max_map_memory="1KB")  # no maps: no guard
    n = len(stats_only.tokens)
    with pytest.raises(ResourceError) as refused:
        workbench.trace(loaded, "Memory guard", max_new_tokens=2, maps="all", max_map_memory="1KB")
    # Independent arithmetic: 3 layers x 6 heads x n^2 fp16 values stored + one layer of fp32 being computed.
    expected = 3 * 6 * n * n * 2 + 6 * n * n * 4
    message = str(refused.value)
    assert f"3 text layers x 6 heads at {n} positions" in message and "statistics only" in message
    assert f"{expected / 1024:.1f} KB" in message and "--max-map-memory" in message
    fits = workbench.trace(loaded, "Memory guard", max_new_tokens=2, maps="1:0", max_map_memory=f"{expected}")
    stored = fits.tensor("layer_01.maps")
    assert stored.numel() * stored.element_size() == 1 * n * n * 2  # what the estimate counted as stored


def test_cli_refuses_in_one_line_with_exit_2_and_writes_nothing(tmp_path, monkeypatch):
    out = tmp_path / "big.wbtrace"
    code, _, err = run_cli("trace", "-m", "tiny-llama", "-p", "Memory guard", "-n", "2", "--maps", "all",
                           "--max-map-memory", "4KB", "--out", out)
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2 and len(lines) == 1 and lines[0].startswith("error: full maps of 3 text layers"), err
    assert "drop --maps" in lines[0] and not out.exists()
    monkeypatch.setenv("WORKBENCH_MAX_MAP_MEMORY", "4KB")
    code, _, err = run_cli("trace", "-m", "tiny-llama", "-p", "Memory guard", "-n", "2", "--maps", "all",
                           "--out", out)
    assert code == 2 and "WORKBENCH_MAX_MAP_MEMORY" in err and not out.exists()
    code, _, err = run_cli("trace", "-m", "tiny-llama", "-p", "x", "--maps", "all", "--max-map-memory", "lots")
    assert code == 2 and "cannot read the memory size" in err
