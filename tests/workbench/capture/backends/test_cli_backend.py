"""`workbench trace --backend nnsight|lens` writes the same statistics as HF capture; --remote fails fast."""

from __future__ import annotations

import os
import time

import pytest
import torch

import workbench
from tests.workbench.cli.test_cli import assert_user_error, run

FRONTEND_NAMES = {"nnsight": "nnsight", "lens": "transformer_lens"}
PROMPT = "The key of the red door is 7. The key of the blue door is"


@pytest.fixture(scope="module")
def bundles(tmp_path_factory):
    root = tmp_path_factory.mktemp("backends")
    for backend in ("hf", "nnsight", "lens"):
        result = run("trace", "--model", "tiny-llama", "--prompt", PROMPT, "--raw", "--max-new-tokens", "3",
                     "--backend", backend, "--out", root / f"{backend}.wbtrace")
        assert result.returncode == 0, result.stderr
    return root


@pytest.mark.parametrize("backend", ["nnsight", "lens"])
def test_frontend_bundles_equal_hf_capture(bundles, backend):
    want, got = workbench.load(bundles / "hf.wbtrace"), workbench.load(bundles / f"{backend}.wbtrace")
    assert got.model["frontend"]["name"] == FRONTEND_NAMES[backend] and "frontend" not in want.model
    assert [t.id for t in got.tokens] == [t.id for t in want.tokens]
    for layer in range(want.n_layers()):
        for name, expected in want.layer(layer).items():
            torch.testing.assert_close(got.layer(layer)[name], expected, rtol=1e-5, atol=1e-6, msg=name)


def test_remote_needs_nnsight(tmp_path):
    assert_user_error(run("trace", "--model", "tiny-llama", "--prompt", "hi", "--remote", "-o", tmp_path / "a"),
                      "--backend nnsight")


def test_remote_without_key_fails_at_once(tmp_path):
    env_key = os.environ.pop("NDIF_API_KEY", None)
    try:
        start = time.monotonic()
        result = run("trace", "--model", "llama-3.1-8b", "--prompt", "hi", "--backend", "nnsight", "--remote",
                     "-o", tmp_path / "a")
        assert time.monotonic() - start < 60
        assert_user_error(result, "NDIF_API_KEY")
    finally:
        if env_key is not None:
            os.environ["NDIF_API_KEY"] = env_key


def test_unknown_backend(tmp_path):
    assert_user_error(run("trace", "--model", "tiny-llama", "--prompt", "hi", "--backend", "jax",
                          "-o", tmp_path / "a"), "--backend")


@pytest.mark.parametrize("backend", ["nnsight", "lens"])
def test_map_memory_guard_applies_to_frontends(tmp_path, backend):
    result = run("trace", "--model", "tiny-llama", "--prompt", PROMPT, "--raw", "-n", "0", "--backend", backend,
                 "--maps", "all", "--max-map-memory", "4KB", "-o", tmp_path / "a")
    assert_user_error(result, "--max-map-memory")
    assert not (tmp_path / "a").exists()
