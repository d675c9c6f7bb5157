"""Range checks for numeric options (the CLI's and the Python API's), done before any work starts.

typer turns text into an int or a float; these say whether the number makes sense: counts are bounded on
both sides (a 330-digit `--max-new-tokens` must not reach a loop), and reals must be finite (`nan` passes
every `<` comparison, so a plain range check lets it through).
"""

from __future__ import annotations

import math

from workbench.errors import InputError

# Larger than any sensible count of tokens, layers, epochs or inputs, small enough to never size a loop badly.
MAX_COUNT = 10_000_000


def count(option: str, value: int | None, *, low: int = 0, high: int = MAX_COUNT) -> int | None:
    """`value` if it is a whole number in [low, high] (None passes: the option's default applies)."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        shown = str(value) if len(str(value)) <= 20 else f"a {len(str(value))}-digit number"
        raise InputError(f"{option} must be between {low} and {high:,}, not {shown}")
    return value


def real(option: str, value: float | None, *, low: float | None = None, high: float | None = None,
         above: float | None = None) -> float | None:
    """`value` if it is finite and within [low, high] (and > above); None passes."""
    if value is None:
        return None
    if not math.isfinite(value):
        raise InputError(f"{option} must be a finite number, not {value}")
    if (low is not None and value < low) or (high is not None and value > high) or (above is not None
                                                                                     and value <= above):
        if above is not None:
            bound = f"above {above:g}" + (f" and at most {high:g}" if high is not None else "")
        elif low is not None and high is not None:
            bound = f"between {low:g} and {high:g}"
        else:
            bound = f"at least {low:g}" if low is not None else f"at most {high:g}"
        raise InputError(f"{option} must be {bound}, not {value:g}")
    return value
