"""Helpers shared by the planted-model builders: seeded random blocks, saving with ground truth."""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path

import torch

SEED = 0


def generator(offset: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(SEED + offset)


def random_block(rows: int, cols: int, std: float, gen: torch.Generator) -> torch.Tensor:
    return torch.randn(rows, cols, generator=gen) * std


def unit_rows(rows: int, cols: int, norm: float, gen: torch.Generator) -> torch.Tensor:
    """Random rows of exactly `norm` length (so RMSNorm / LayerNorm treat every token alike)."""
    block = torch.randn(rows, cols, generator=gen)
    return block / block.norm(dim=1, keepdim=True) * norm


def save(model, out: Path, ground_truth: dict, *, tokenizer=None, processor=None) -> Path:
    """Write model (+ tokenizer or processor) and ground_truth.json into `out` atomically."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}-", dir=out.parent))
    try:
        model.save_pretrained(staging)
        if processor is not None:
            processor.save_pretrained(staging)
        elif tokenizer is not None:
            tokenizer.save_pretrained(staging)
        (staging / "ground_truth.json").write_text(json.dumps(ground_truth, indent=1) + "\n")
        if out.exists():
            shutil.rmtree(out)
        staging.rename(out)
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
    return out
