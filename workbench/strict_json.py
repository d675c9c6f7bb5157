"""Strict JSON in and out: every JSON document the workbench writes (bundle manifests, analysis results, the
`--json` exports) goes through `dumps`, and manifests are read with `loads`.

Python's json module writes NaN and Infinity by default, which is not JSON: other tools (jq, browsers,
pandas in strict mode) refuse the whole document. `dumps` never writes them: a non-finite number becomes
null. `loads` refuses them (and integers beyond 64 bits), so a manifest carrying one is named as damaged instead of
crashing a later `int(...)`, comparison or JavaScript reader.
"""

from __future__ import annotations

import json
import math


def dumps(data, *, indent: int | None = None, default=None) -> str:
    """`data` as strict JSON text (UTF-8 kept, not escaped); NaN and +-Infinity become null. `default` converts
    values json does not know (e.g. `float` for numpy scalars), as in json.dumps."""
    try:
        return json.dumps(data, ensure_ascii=False, indent=indent, allow_nan=False, default=default)
    except ValueError:  # only a non-finite float makes allow_nan=False fail; the walk is paid only then
        if default is not None:  # numpy scalars become floats first, so the walk sees them
            data = json.loads(json.dumps(data, default=default))
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


class UnsafeNumber(ValueError):
    """A JSON text holds NaN, Infinity or -Infinity (Python's extension, not JSON), a float that overflows, or an
    integer outside 64 bits (which no other JSON reader keeps exact)."""


def _refuse(constant: str):
    raise UnsafeNumber(f"{constant} is not a JSON number")


def _float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):  # 1e999 is valid JSON syntax but overflows to inf
        raise UnsafeNumber(f"{text[:20]} is too large for a float")
    return value


def _int(text: str) -> int:
    if len(text) > 20 or not -(2**63) <= int(text) < 2**63:  # length first: int() of 5,000 digits is slow
        raise UnsafeNumber(f"{text[:20]}{'...' if len(text) > 20 else ''} is outside the 64-bit range")
    return int(text)


def loads(text: str | bytes):
    """Parse strict JSON: NaN / Infinity / -Infinity, floats that overflow (1e999) and integers outside 64 bits
    raise UnsafeNumber (a ValueError), as other parse errors raise json.JSONDecodeError (also a ValueError)."""
    return json.loads(text, parse_constant=_refuse, parse_float=_float, parse_int=_int)
