"""The inputs of a sweep: one JSON object per line, each traced once.

    {"prompt": "...", "id": "optional-unique-id", "image": "optional/path.png", "system": "...", "max_new_tokens": 4}

`name` is accepted as a synonym of `id` (the format of `workbench trace --prompts`). Without either, the id is
the 0-based line index among the inputs. Relative image paths are resolved against --images DIR, else the
folder of the JSONL file. Everything is checked before any model loads, with the line number in the message.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import asdict, dataclass
from pathlib import Path

from workbench.errors import InputError

_ID = re.compile(r"^[A-Za-z0-9._-]{1,128}$")
_KNOWN = {"prompt", "id", "name", "image", "system", "max_new_tokens"}


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
    """Parse and check a sweep's JSONL file (see the module docstring)."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise InputError(f"--data {path} does not exist; pass a JSONL file with one {{\"prompt\": ...}} per line")
    if images is not None and not Path(images).expanduser().is_dir():
        raise InputError(f"--images {images} is not a folder")
    image_root = Path(images).expanduser() if images is not None else path.parent
    items: list[SweepInput] = []
    seen: dict[str, int] = {}
    digest = hashlib.sha256()
    with open(path, encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                data = json.loads(line)
            except json.JSONDecodeError as error:
                raise InputError(f"{path}:{number}: not valid JSON ({error.msg}); write one JSON object per "
                                 "line") from None
            items.append(_parse(data, path, number, len(items), image_root, seen))
            digest.update(json.dumps(data, sort_keys=True, ensure_ascii=False).encode() + b"\n")
    if not items:
        raise InputError(f"{path} holds no inputs")
    return InputSet(path, items, digest.hexdigest())


def _parse(data, path: Path, number: int, index: int, image_root: Path, seen: dict[str, int]) -> SweepInput:
    where = f"{path}:{number}"
    if not isinstance(data, dict) or not isinstance(data.get("prompt"), str) or not data["prompt"].strip():
        raise InputError(f'{where}: each line needs a non-empty "prompt" string')
    unknown = sorted(set(data) - _KNOWN)
    if unknown:
        raise InputError(f"{where}: unknown field(s) {unknown}; allowed: {sorted(_KNOWN)}")
    raw_id = data.get("id", data.get("name"))
    item_id = f"{index:06d}" if raw_id is None else str(raw_id)
    if not _ID.match(item_id):
        raise InputError(f"{where}: id {item_id!r} may only use letters, digits, '.', '_' and '-' (at most 128)")
    if item_id in seen:
        raise InputError(f"{where}: id {item_id!r} was already used on line {seen[item_id]}; ids must be unique")
    seen[item_id] = number
    image = data.get("image")
    if image is not None:
        if not isinstance(image, str):
            raise InputError(f'{where}: "image" must be a path string')
        resolved = (image_root / image).expanduser()
        if not resolved.is_file():
            raise InputError(f"{where}: image {resolved} does not exist (relative paths are resolved against "
                             f"{image_root}; pass --images DIR to change that)")
        image = str(resolved.resolve())
    new_tokens = data.get("max_new_tokens")
    if new_tokens is not None and (not isinstance(new_tokens, int) or isinstance(new_tokens, bool) or new_tokens < 0):
        raise InputError(f'{where}: "max_new_tokens" must be an integer >= 0')
    system = data.get("system")
    if system is not None and not isinstance(system, str):
        raise InputError(f'{where}: "system" must be a string')
    return SweepInput(index, item_id, data["prompt"], image, system, new_tokens)
