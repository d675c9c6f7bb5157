"""The one strict reader for JSONL files users hand to the workbench (prompt sets, sweep inputs, probe tasks).

Every line is decoded, parsed and checked against a field table before the caller does any work, so a bad
line 900 fails in a second instead of after 899 traces. Every complaint is one line that starts with
`FILE:LINE:` and names the field. What is refused and why:

- bytes that are not UTF-8 (a Latin-1 file would otherwise turn into mojibake prompts);
- NaN / Infinity (not JSON; Python's parser accepts them) and numbers too large for a float (1e999 -> inf);
- strings with lone surrogates (`"\\udc80"`): they cannot be written back as UTF-8;
- objects nested deeper than MAX_DEPTH and lines longer than MAX_LINE_BYTES (bounded memory and recursion);
- a key given twice in one object (the parser would silently keep the last);
- a value of the wrong type, and (unless the format allows extra fields) fields the format does not know.

Names that become file names (bundle names, sweep ids) go through `name_problem`: no `..`, no leading dot
(hidden files), no `/`, no control characters.
"""

from __future__ import annotations

import json
import math
import re
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from workbench.errors import InputError

MAX_LINE_BYTES = 4 * 1024 * 1024  # a 32k-token prompt is ~150 KB: far below, and one line never sizes memory
MAX_DEPTH = 16  # our formats nest 3 deep at most
_NAME = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9._-]{0,127}")
_TYPE_NAMES = {str: "a string", int: "an integer", float: "a number", bool: "true or false", list: "a list",
               dict: "an object", type(None): "null"}


@dataclass(frozen=True)
class Field:
    """What one field of a record may hold: its JSON type(s), whether it must be present, and an extra check
    that returns a complaint (or None) for a value of the right type."""

    types: tuple[type, ...]
    required: bool = False
    check: Callable[[object], str | None] | None = None


@dataclass(frozen=True)
class Record:
    line: int  # 1-based line number in the file
    data: dict

    def where(self, path: Path) -> str:
        return f"{path}:{self.line}"


def name_problem(name: str) -> str | None:
    """Why `name` cannot be used as a file name we write (None when it can)."""
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        return ("may only use letters, digits, '.', '_' and '-', must not start with '.', and is at most 128 "
                "characters")
    return None


def read_records(path: Path, fields: dict[str, Field], *, what: str, extra: str = "error") -> list[Record]:
    """Every non-blank line of `path` as a checked object. `what` names the file in messages (e.g. "--prompts");
    extra="error" refuses unknown fields, extra="warn" (formats whose records carry ground truth beside the
    inputs) warns once per file, naming them, and keeps them in `Record.data`."""
    path = Path(path).expanduser()
    if not path.exists():
        raise InputError(f"{what} {path} does not exist")
    if not path.is_file():  # a folder, a FIFO or a device: refuse rather than block or read forever
        raise InputError(f"{what} {path} is not a regular file")
    records: list[Record] = []
    unknown: dict[str, int] = {}
    with open(path, "rb") as handle:
        number = 0
        while True:
            raw = handle.readline(MAX_LINE_BYTES + 1)
            if not raw:
                break
            number += 1
            if len(raw) > MAX_LINE_BYTES:
                raise InputError(f"{path}:{number}: line longer than {MAX_LINE_BYTES // (1024 * 1024)} MiB; "
                                 "write one JSON object per line")
            data = _parse_line(raw, path, number)
            if data is None:
                continue
            _check_fields(data, fields, f"{path}:{number}", extra)
            for key in data:
                if key not in fields:
                    unknown.setdefault(_shown(key), number)
            records.append(Record(number, data))
    if unknown:
        listed = ", ".join(f"{name} (first on line {line})" for name, line in sorted(unknown.items()))
        warnings.warn(f"{path}: field(s) {listed} are not read by {what}; they are kept as data only "
                      f"(check the spelling; known fields: {', '.join(fields)})", stacklevel=2)
    return records


def _parse_line(raw: bytes, path: Path, number: int) -> dict | None:
    where = f"{path}:{number}"
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as error:
        raise InputError(f"{where}: not UTF-8 (byte 0x{raw[error.start]:02x} at column {error.start + 1}); "
                         "save the file as UTF-8") from None
    if number == 1:
        text = text.removeprefix("\ufeff")  # a byte-order mark some editors write: harmless
    if not text.strip():
        return None
    try:
        data = json.loads(text, parse_constant=_refuse_constant, object_pairs_hook=_unique_keys)
    except _Refused as refused:
        raise InputError(f"{where}: {refused}") from None
    except json.JSONDecodeError as error:
        raise InputError(f"{where}: not valid JSON ({error.msg} at column {error.colno}); write one JSON object "
                         "per line") from None
    except RecursionError:
        raise InputError(f"{where}: nested more than {MAX_DEPTH} levels deep") from None
    except ValueError as error:  # e.g. an integer of more than 4300 digits
        raise InputError(f"{where}: not valid JSON ({str(error).splitlines()[0][:120]})") from None
    if not isinstance(data, dict):
        raise InputError(f"{where}: each line must be a JSON object {{...}}, not {_type_name(data)}")
    return data


class _Refused(ValueError):
    pass


def _refuse_constant(name: str):
    raise _Refused(f"{name} is not a JSON number; write a finite number or null")


def _unique_keys(pairs: list[tuple[str, object]]) -> dict:
    data = {}
    for key, value in pairs:
        if key in data:
            raise _Refused(f"field {_shown(key)} is given twice in one object")
        data[key] = value
    return data


def _check_fields(data: dict, fields: dict[str, Field], where: str, extra: str) -> None:
    for key in data:
        bad = _value_problem(data[key])
        if bad:
            raise InputError(f"{where}: field {_shown(key)}: {bad}")
    for key, field in fields.items():
        if key not in data:
            if field.required:
                given = [_shown(name) for name in data if name not in fields][:5]
                hint = f" (the line has {', '.join(given)})" if given else ""
                raise InputError(f'{where}: field "{key}" is missing{hint}; it must be {_types_text(field.types)}')
            continue
        value = data[key]
        if not _has_type(value, field.types):
            raise InputError(f'{where}: field "{key}" must be {_types_text(field.types)}, not {_type_name(value)}')
        problem = field.check(value) if field.check is not None else None
        if problem:
            raise InputError(f'{where}: field "{key}" {problem}')
    strangers = [key for key in data if key not in fields]
    if strangers and extra == "error":
        raise InputError(f"{where}: unknown field(s) {', '.join(map(_shown, strangers))}; allowed: "
                         f"{', '.join(fields)}")


def _value_problem(value) -> str | None:
    """Depth, finiteness and encodability of a whole value, walked without recursion."""
    stack = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if depth > MAX_DEPTH:
            return f"nested more than {MAX_DEPTH} levels deep"
        if isinstance(item, float) and not math.isfinite(item):
            return "a number too large to represent; write a finite number"
        if isinstance(item, str):
            try:
                item.encode("utf-8")
            except UnicodeEncodeError:
                return "holds a lone surrogate escape (\\udXXX) that is not text"
        elif isinstance(item, dict):
            for key, child in item.items():
                stack.append((key, depth + 1))
                stack.append((child, depth + 1))
        elif isinstance(item, list):
            stack.extend((child, depth + 1) for child in item)
    return None


def _has_type(value, types: tuple[type, ...]) -> bool:
    if isinstance(value, bool):  # bool is an int in Python, never in JSON
        return bool in types
    if isinstance(value, int) and float in types:
        return True
    return isinstance(value, types)


def _type_name(value) -> str:
    return _TYPE_NAMES.get(type(value), type(value).__name__)


def _types_text(types: tuple[type, ...]) -> str:
    return " or ".join(_TYPE_NAMES[kind] for kind in types)


def _shown(key: str) -> str:
    """A key as it may be printed: quoted, bounded, control characters and surrogates escaped."""
    text = json.dumps(key[:60])
    return text if len(key) <= 60 else text[:-1] + '..."'
