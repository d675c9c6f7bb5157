"""Shared fixtures: offline hub, models loaded once per session. Reference computations: tests/helpers.py."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")

import pytest  # noqa: E402

import workbench  # noqa: E402


@pytest.fixture(scope="session")
def models():
    """models(name) -> LoadedModel, loaded once per session (tiny fixtures and real weights alike)."""
    cache = {}

    def get(name: str):
        if name not in cache:
            cache[name] = workbench.load_model(name)
        return cache[name]

    return get


@pytest.fixture
def one_torch_thread():
    """One torch thread for the test: on a shared 2-core machine two threads oversubscribe the cores and run
    several times slower (see docs/scaling.md); numbers compared within a test use the same setting."""
    from workbench.threads import torch_threads

    with torch_threads(1):
        yield
