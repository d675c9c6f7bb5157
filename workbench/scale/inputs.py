"""The inputs of a sweep: the prompt-set format of `workbench trace --prompts` (workbench.datasets.prompt_lines),

    {"prompt": "...", "id": "optional-unique-id", "image": "optional/path.png", "system": "...", "max_new_tokens": 4}

each traced once. Without an id or name, the id is the 0-based line index among the inputs (six digits).
Relative image paths are resolved against --images DIR, else the folder of the JSONL file. Every line is
checked before any model loads, with FILE:LINE and the field in the message.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from pathlib import Path

from workbench.datasets.prompt_lines import read_prompt_lines


@dataclass(frozen=True)
class SweepInput:
    index: int  # 0-based position among the inputs: the sweep's stable key
    id: str
    prompt: str
    image: str | None = None
    system: str | None = None
    max_new_tokens: int | None = None

    def to_row(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class InputSet:
    path: Path
    items: list[SweepInput]
    fingerprint: str  # SHA-256 over the parsed lines as written (image paths unresolved): moving the data keeps it

    def __len__(self) -> int:
        return len(self.items)


def read_inputs(path: Path, *, images: Path | None = None) -> InputSet:
    """Parse and check every line of a sweep's JSONL file before anything runs (format: prompt_lines)."""
    lines = read_prompt_lines(Path(path), images=Path(images) if images is not None else None, what="--data",
                              default_name="{:06d}".format)
    digest = hashlib.sha256()
    items = []
    for line in lines:
        items.append(SweepInput(line.index, line.name, line.prompt, line.image, line.system, line.max_new_tokens))
        digest.update(json.dumps(line.data, sort_keys=True, ensure_ascii=False).encode() + b"\n")
    return InputSet(Path(path).expanduser(), items, digest.hexdigest())
