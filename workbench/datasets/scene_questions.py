"""The question file of a held-out scene set (FOLDER/questions.jsonl, written by `workbench.datasets.scenes`),
read through the strict JSONL reader: every line is checked, and every image it names must exist, before the
first question is traced."""

from __future__ import annotations

from pathlib import Path

from workbench.datasets.jsonl import Field, name_problem, read_records
from workbench.errors import InputError

QUESTION_TYPES = ("presence", "colour", "shape", "count", "position", "caption")


def _one_of_types(value: str) -> str | None:
    return None if value in QUESTION_TYPES else f"must be one of {', '.join(QUESTION_TYPES)}"


def _relative(value: str) -> str | None:
    return None if value.strip() and not Path(value).is_absolute() else "must be a path relative to the folder"


FIELDS = {
    "scene": Field((str,), required=True, check=name_problem),
    "image": Field((str,), required=True, check=_relative),
    "type": Field((str,), required=True, check=_one_of_types),
    "question": Field((str,), required=True, check=lambda v: None if v.strip() else "must not be empty"),
    "answer": Field((str,), required=True),
    "prior_answer": Field((str, type(None))),
    "subtype": Field((str,)),
    "target": Field((list,)),
    "conflicts": Field((bool,)),
}


def read_questions(folder: Path) -> list[dict]:
    """The checked question objects of a scene folder, in file order."""
    folder = Path(folder).expanduser()
    path = folder / "questions.jsonl"
    if not path.is_file() or not (folder / "scenes.jsonl").is_file():
        raise InputError(f"{folder} has no scenes.jsonl and questions.jsonl; pass the folder written by "
                         "`python -m workbench.datasets.scenes` (the shipped set is data/scenes)")
    records = read_records(path, FIELDS, what="--scenes", extra="warn")
    checked: set[str] = set()
    for record in records:
        image = record.data["image"]
        if image not in checked:
            if not (folder / image).is_file():
                raise InputError(f'{record.where(path)}: field "image": {folder / image} does not exist; the scene '
                                 f"set in {folder} is incomplete")
            checked.add(image)
    return [record.data for record in records]
