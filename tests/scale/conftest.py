"""Sweep fixtures: JSONL input files and one real local Ray cluster (2 CPUs, small object store) per session."""

from __future__ import annotations

import json
import os

import pytest

PROMPTS = [
    "The cat sat on the mat and looked at the door.",
    "Anna's locker code is 4417. What is Anna's locker code?",
    "Write one sentence about a lighthouse keeper.",
    "What is 12 times 7? Answer with the number only.",
    "Paris is the capital of France, and Rome is the capital of",
    "List three colours: red, green and",
    "A short story: once upon a time there was a",
    "Translate to French: good morning",
    "The quick brown fox jumps over the lazy dog.",
    "Name a planet in the solar system.",
    "Why is the sky blue?",
    "Finish the pattern: 2, 4, 8, 16,",
]


def write_jsonl(path, prompts, **extra) -> str:
    with open(path, "w", encoding="utf-8") as handle:
        for prompt in prompts:
            handle.write(json.dumps({"prompt": prompt, **extra}) + "\n")
    return str(path)


@pytest.fixture
def inputs_file(tmp_path):
    """make(n) -> path of a JSONL file with n prompts (cycling through PROMPTS with a numbered suffix)."""

    def make(n: int, name: str = "inputs.jsonl") -> str:
        prompts = [f"{PROMPTS[i % len(PROMPTS)]} ({i})" for i in range(n)]
        return write_jsonl(tmp_path / name, prompts)

    return make


@pytest.fixture(scope="session")
def ray_cluster():
    """A real local Ray cluster shared by every Ray test, shut down at the end of the session."""
    ray = pytest.importorskip("ray")
    env = {key: os.environ[key] for key in ("HF_HUB_OFFLINE", "WORKBENCH_CACHE", "TRANSFORMERS_NO_ADVISORY_WARNINGS")
           if key in os.environ}
    ray.init(num_cpus=2, include_dashboard=False, object_store_memory=200 * 1024 * 1024,
             runtime_env={"env_vars": env}, logging_level="ERROR", log_to_driver=False)
    try:
        yield ray
    finally:
        ray.shutdown()


@pytest.fixture(autouse=True)
def _one_thread(one_torch_thread):
    yield
