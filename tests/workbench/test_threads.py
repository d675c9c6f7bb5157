"""The default thread count leaves the CPUs other processes hold to them."""

from __future__ import annotations

import os

import pytest

from workbench import threads


@pytest.fixture
def machine(monkeypatch):
    """A machine with `cpus` usable CPUs and a 1-minute load average of `load`."""
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)

    def set_to(cpus: int, load: float) -> None:
        monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(cpus)))
        monkeypatch.setattr(os, "getloadavg", lambda: (load, load, load))

    return set_to


@pytest.mark.parametrize("cpus, load, expected", [(2, 0.1, 2), (2, 1.2, 1), (2, 1.7, 1), (2, 9.0, 1),
                                                  (16, 3.4, 13), (16, 0.0, 16), (1, 0.0, 1)])
def test_default_threads_are_the_idle_cpus(machine, cpus, load, expected):
    machine(cpus, load)
    count, why = threads.default_threads()
    assert count == expected and f"{cpus} usable CPUs" in why


def test_omp_num_threads_wins(machine, monkeypatch):
    machine(8, 0.0)
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    assert threads.default_threads() == (3, "OMP_NUM_THREADS")


def test_apply_threads_sets_torch(machine):
    import torch

    before = torch.get_num_threads()
    try:
        machine(2, 1.6)
        assert threads.apply_threads(None)[0] == 1 and torch.get_num_threads() == 1
        assert threads.apply_threads(2) == (2, "--threads") and torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)
