"""Build the planted-circuit models (weights set by hand, no training) with their ground_truth.json.

    python data/models/planted/build.py                  # writes sink/, induction/, llava/ beside this file
    python data/models/planted/build.py --out DIR        # elsewhere (tests rebuild into a temp dir)

Each model is an ordinary transformers model (LlamaForCausalLM, GPT2LMHeadModel, LlavaForConditionalGeneration)
so every backend sees it; the mechanism, the heads and the residual subspaces are documented in each
ground_truth.json and in the builder modules' docstrings. Seeded: rebuilding gives identical weights.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
for path in (HERE, HERE.parents[2]):
    if str(path) not in sys.path:
        sys.path.insert(0, str(path))

import _induction
import _llava
import _sink
from _common import save

BUILDERS = {"sink": _sink.build, "induction": _induction.build, "llava": _llava.build}


def build_all(out: Path = HERE, names=tuple(BUILDERS)) -> dict[str, Path]:
    import torch

    torch.manual_seed(0)
    written = {}
    for name in names:
        model, holder, ground_truth = BUILDERS[name]()
        is_processor = hasattr(holder, "image_processor")
        written[name] = save(model, Path(out) / name, ground_truth, tokenizer=None if is_processor else holder,
                             processor=holder if is_processor else None)
    return written


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=HERE)
    parser.add_argument("names", nargs="*", help=f"any of {list(BUILDERS)} (default: all)")
    args = parser.parse_args(argv)
    for name, path in build_all(args.out, args.names or tuple(BUILDERS)).items():
        print(f"{name}: {path}")
    return 0


if __name__ == "__main__":
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    raise SystemExit(main())
