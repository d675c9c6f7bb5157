"""Strict JSON in and out: every JSON document the workbench writes (bundle manifests, analysis results, the
`--json` exports) goes through `dumps`, and manifests are read with `loads`.

Python's json module writes NaN and Infinity by default, which is not JSON: other tools (jq, browsers,
pandas in strict mode) refuse the whole document. `dumps` never writes them: a non-finite number becomes
null. `loads` refuses them, so a manifest carrying one is named as damaged instead of crashing a later
`int(...)` or comparison.
"""

from __future__ import annotations

import json
import math


def dumps(data, *, indent: int | None = None) -> str:
    """`data` as strict JSON text (UTF-8 kept, not escaped); NaN and +-Infinity become null."""
    try:
        return json.dumps(data, ensure_ascii=False, indent=indent, allow_nan=False)
    except ValueError:  # only a non-finite float makes allow_nan=False fail; the walk is paid only then
        return json.dumps(finite(data), ensure_ascii=False, indent=indent, allow_nan=False)


def finite(value):
    """A copy of a JSON-able value with every non-finite float replaced by None (tuples become lists)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {key: finite(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite(item) for item in value]
    return value


class NonFiniteNumber(ValueError):
    """A JSON text holds NaN, Infinity or -Infinity (Python's extension, not JSON)."""


def _refuse(constant: str):
    raise NonFiniteNumber(f"{constant} is not a JSON number")


def _float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):  # 1e999 is valid JSON syntax but overflows to inf
        raise NonFiniteNumber(f"{text[:20]} is too large for a float")
    return value


def loads(text: str | bytes):
    """Parse strict JSON: NaN / Infinity / -Infinity and numbers that overflow a float (1e999) raise
    NonFiniteNumber (a ValueError), as other parse errors raise json.JSONDecodeError (also a ValueError)."""
    return json.loads(text, parse_constant=_refuse, parse_float=_float)
