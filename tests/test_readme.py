"""The README's model table names every registry model (the planted and scene models the docs and notebooks use
included), and its first CLI example asks for the behaviour it describes."""

from __future__ import annotations

import re
from pathlib import Path

from workbench.models.registry import REGISTRY

ROOT = Path(__file__).resolve().parents[1]


def _section(title: str) -> str:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    start = text.index(f"## {title}")
    end = text.find("\n## ", start + 1)
    return text[start:end if end > 0 else None]


def test_model_table_lists_every_registry_model():
    table = _section("Supported models")
    listed = set(re.findall(r"`([a-z0-9.\-]+)`", table))
    assert not set(REGISTRY) - listed, f"README's model table lacks {sorted(set(REGISTRY) - listed)}"


def test_first_cli_trace_continues_the_prompt_as_described():
    cli = _section("CLI in ten lines")
    first = next(line for line in cli.splitlines() if line.startswith("workbench trace"))
    # a chat model answers a chat-templated "The capital of France is" with something else than " Paris."
    assert "--raw" in first and "The capital of France is" in first
    assert "chat template" in cli
