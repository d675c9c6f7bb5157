"""The memory guard of full-map capture: estimate the bytes of the requested maps before any forward runs, and
refuse (one line, what to do instead) when they exceed a budget, rather than being killed by the OS mid-trace.

Full maps cost layers x heads x n^2 values; statistics cost O(layers x heads x n). The budget defaults to a
fraction of the RAM available now (Linux MemAvailable) and is overridden by `max_map_memory=` / the CLI's
`--max-map-memory` / the WORKBENCH_MAX_MAP_MEMORY environment variable ("2GB", "512MB", "unlimited").
"""

from __future__ import annotations

import os
import re

from workbench.errors import InputError, ResourceError

ENV = "WORKBENCH_MAX_MAP_MEMORY"
AVAILABLE_FRACTION = 0.5  # the model, statistics and the bundle writer need the rest
_UNITS = {"": 1, "b": 1, "k": 1024, "kb": 1024, "m": 1024**2, "mb": 1024**2, "g": 1024**3, "gb": 1024**3,
          "t": 1024**4, "tb": 1024**4, "kib": 1024, "mib": 1024**2, "gib": 1024**3, "tib": 1024**4}
_BYTES = {"float16": 2, "bfloat16": 2, "float32": 4, "float64": 8}


def parse_size(text) -> int | None:
    """Bytes from '2GB', '512 MiB', '1.5g' or an int; None for 'unlimited'."""
    if isinstance(text, int) and not isinstance(text, bool):
        value = text
    else:
        if str(text).strip().lower() in ("unlimited", "none", "off"):
            return None
        match = re.fullmatch(r"\s*([0-9]{0,30}\.?[0-9]{1,30})\s*([a-zA-Z]{0,5})\s*", str(text)[:80])
        if not match or match.group(2).lower() not in _UNITS:
            raise InputError(f"cannot read the memory size {str(text)[:40]!r}; write e.g. 2GB, 512MB or unlimited")
        value = int(float(match.group(1)) * _UNITS[match.group(2).lower()])
    if value <= 0:  # 0 must not quietly mean "no limit": that is spelled 'unlimited'
        raise InputError(f"the memory size {str(text)[:40]!r} is not above 0; write e.g. 2GB, or 'unlimited' for "
                         "no limit")
    return value


def available_bytes() -> int | None:
    """RAM available to new allocations now (MemAvailable), None when the system does not say."""
    try:
        with open("/proc/meminfo") as handle:
            for line in handle:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def map_budget(max_map_memory=None) -> tuple[int | None, str]:
    """(budget in bytes or None for no limit, where it came from) from the argument, the env var or free RAM."""
    if max_map_memory is not None:
        return parse_size(max_map_memory), "--max-map-memory"
    if os.environ.get(ENV):
        return parse_size(os.environ[ENV]), ENV
    available = available_bytes()
    if available is None:
        return None, "unknown"
    return int(available * AVAILABLE_FRACTION), f"{AVAILABLE_FRACTION:.0%} of the {human(available)} RAM available"


def human(n: int) -> str:
    for unit, size in (("TB", 1024**4), ("GB", 1024**3), ("MB", 1024**2), ("KB", 1024)):
        if n >= size:
            return f"{n / size:.1f} {unit}"
    return f"{n} bytes"


def map_bytes(layers: int, heads: int, positions, map_dtype: str) -> int:
    """Stored maps [head, query_pos, key_pos] of `layers` layers, plus one layer's fp32 maps being computed.
    positions: an int (a square stack) or (query rows, keys) for a rectangular one (Mllama's cross stack)."""
    rows, keys = positions if isinstance(positions, tuple) else (positions, positions)
    per_layer = heads * rows * keys
    return layers * per_layer * _BYTES.get(map_dtype, 4) + (per_layer * 4 if layers else 0)


def check_map_memory(requests: list[tuple[str, int, int, int | tuple[int, int]]], map_dtype: str,
                     max_map_memory=None) -> None:
    """requests: (stack, layers, heads, positions) of every stack keeping maps. Raises ResourceError above budget."""
    total = sum(map_bytes(layers, heads, n, map_dtype) for _, layers, heads, n in requests)
    if not total:
        return
    budget, source = map_budget(max_map_memory)
    if budget is None or total <= budget:
        return
    what = " + ".join(f"{layers} {stack} layer{'s' * (layers != 1)} x {heads} head{'s' * (heads != 1)} at "
                      f"{' x '.join(map(str, n)) if isinstance(n, tuple) else n} positions"
                      for stack, layers, heads, n in requests if layers)
    raise ResourceError(
        f"full maps of {what} need about {human(total)} ({map_dtype}), above the memory budget of {human(budget)} "
        f"({source}); capture statistics only (drop --maps), keep fewer layers or heads (e.g. --maps 0:0), or "
        f"raise the budget with --max-map-memory SIZE or {ENV}=SIZE")
