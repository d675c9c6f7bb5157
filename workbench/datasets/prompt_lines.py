"""The prompt-set format read by `workbench trace --prompts` and `workbench sweep --data`: one object per line,

    {"prompt": "...", "name": "optional-unique-name", "image": "optional/path.png", "system": "...",
     "max_new_tokens": 4, "spans": [{"name": "doc1", "start": 0, "end": 120}]}

`id` is accepted as a synonym of `name`. Without either, the name comes from the line's position among the
inputs. Names become file names (NAME.wbtrace, sweep bundles), so they are checked as such and must be unique
(ignoring case, for case-insensitive file systems). Relative image paths are resolved against `images`, else
the folder of the file, and must exist and open as images. Other fields (the shipped prompt sets carry their
ground truth: `answer`, `words`, ...) are kept and named once in a warning. Every line is checked before the
caller traces anything.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from workbench.datasets.jsonl import Field, Record, name_problem, read_records
from workbench.errors import InputError

MAX_NEW_TOKENS = 1_000_000


def _non_empty(value: str) -> str | None:
    return "must not be empty" if not value.strip() else None


def _name(value) -> str | None:
    if isinstance(value, int):
        return "must be 0 or more" if value < 0 else None
    return name_problem(value)


def _token_count(value: int) -> str | None:
    return None if 0 <= value <= MAX_NEW_TOKENS else f"must be between 0 and {MAX_NEW_TOKENS:,}"


FIELDS = {
    "prompt": Field((str,), required=True, check=_non_empty),
    "name": Field((str, int), check=_name),
    "id": Field((str, int), check=_name),
    "image": Field((str,), check=_non_empty),
    "system": Field((str,)),
    "max_new_tokens": Field((int,), check=_token_count),
    "spans": Field((list,)),  # [{"name", "start", "end"}] characters of the prompt (workbench.capture.spans)
}


@dataclass(frozen=True)
class PromptLine:
    line: int  # 1-based line number in the file
    index: int  # 0-based position among the inputs
    name: str
    prompt: str
    image: str | None  # absolute path, checked to exist
    system: str | None
    max_new_tokens: int | None
    data: dict  # the object as written (the sweep fingerprints it)

    def as_item(self) -> dict:
        """The keys a trace of this line needs, leaving out those the line does not set (the options apply)."""
        item = {"prompt": self.prompt, "name": self.name}
        for key in ("image", "system", "max_new_tokens"):
            if getattr(self, key) is not None:
                item[key] = getattr(self, key)
        if self.data.get("spans") is not None:
            item["spans"] = self.data["spans"]
        return item


def read_prompt_lines(path: Path, *, images: Path | None = None, what: str = "--prompts",
                      default_name: Callable[[int], str] = "{:04d}".format) -> list[PromptLine]:
    """Read and check every line of a prompt set (see the module docstring); one-line InputError otherwise."""
    path = Path(path).expanduser()
    if images is not None and not Path(images).expanduser().is_dir():
        raise InputError(f"--images {images} is not a folder")
    image_root = Path(images).expanduser() if images is not None else path.parent
    records = read_records(path, FIELDS, what=what, extra="warn")
    if not records:
        raise InputError(f"{path} holds no prompts; write one {{\"prompt\": ...}} object per line")
    lines: list[PromptLine] = []
    seen: dict[str, int] = {}
    for index, record in enumerate(records):
        lines.append(_line(record, index, path, image_root, default_name, seen))
    return lines


def _line(record: Record, index: int, path: Path, image_root: Path, default_name, seen: dict[str, int]) -> PromptLine:
    where, data = record.where(path), record.data
    if "name" in data and "id" in data and data["name"] != data["id"]:
        raise InputError(f'{where}: field "name" and field "id" disagree; give one of them')
    raw = data.get("name", data.get("id"))
    name = default_name(index) if raw is None else str(raw)
    key = name.lower()
    if key in seen:
        raise InputError(f'{where}: field "name": {name!r} is already used on line {seen[key]} (names must be '
                         "unique, ignoring case)")
    seen[key] = record.line
    image = data.get("image")
    if image is not None:
        image = _checked_image(image_root / image, where, image_root)
    return PromptLine(record.line, index, name, data["prompt"], image, data.get("system"),
                      data.get("max_new_tokens"), data)


def _checked_image(path: Path, where: str, root: Path) -> str:
    """The resolved path of an image that exists and whose header reads as an image within the workbench's size
    limits (workbench/images.py; no pixels decoded)."""
    from workbench.images import check_image, read_image_file

    resolved = path.expanduser()
    if not resolved.is_file():
        raise InputError(f'{where}: field "image": {resolved} does not exist (relative paths are resolved '
                         f"against {root}; pass --images DIR to change that)")
    check_image(read_image_file(resolved, what=f'{where}: field "image": {resolved}'),
                what=f'{where}: field "image": {resolved}')
    return str(resolved.resolve())
