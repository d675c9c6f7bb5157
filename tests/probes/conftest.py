"""A small probe dataset traced from a tiny fixture (seconds), shared by the probe tests of a session."""

from __future__ import annotations

import random

import pytest

from workbench.threads import torch_threads

N_INPUTS = 120  # enough held-out generations for AUROC to be meaningful, still a few seconds of tracing


def short_kv_items(n: int, seed: int = 0) -> list:
    """Short key-value prompts (the byte-level fixture tokenizer makes every character a token)."""
    from workbench.probes.tasks import Item

    from workbench.datasets.prompts import KV_NAMES

    rng = random.Random(seed)
    items = []
    for index in range(n):
        a, b, c = rng.sample(KV_NAMES, 3)
        value = str(rng.randint(10, 99))
        answerable = index % 2 == 0
        asked = a if answerable else c
        prompt = f"{a} {value}. {b} {rng.randint(10, 99)}. {asked}?"
        name = f"kv-{index:03d}"
        items.append(Item(name, name, "kv/" + ("answerable" if answerable else "unanswerable"), prompt, None,
                          {"answer": value if answerable else "unknown", "answerable": answerable}, "tests"))
    return items


@pytest.fixture(scope="session")
def kv_dataset(tmp_path_factory, models):
    """tiny-llama on short key-value prompts, 6 new tokens each, no MiniLM embeddings."""
    from workbench.probes import dataset

    path = tmp_path_factory.mktemp("probes") / "kv.parquet"
    with torch_threads(1):
        dataset.build(models("tiny-llama"), short_kv_items(N_INPUTS), path, max_new_tokens=6, embed=False)
    return dataset.load(path)


@pytest.fixture(autouse=True)
def _single_thread():
    with torch_threads(1):
        yield
