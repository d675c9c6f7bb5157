"""Safetensors shard headers, read at load without touching the data, and checked against the manifest's index.

A safetensors file starts with an 8-byte little-endian header length and a JSON header naming each tensor's
dtype, shape and byte range. Reading only that header (bounded by the file's size) lets the loader check every
tensor the manifest lists before anything loops over the manifest's numbers: the dims the manifest claims are
then compared with shapes the shards really hold, not with the manifest's own index.
"""

from __future__ import annotations

import json
import math
import os
import stat
import struct
from pathlib import Path

# safetensors' dtype codes for the dtypes a bundle may hold (bundle.DTYPES names).
CODES = {"float32": "F32", "float16": "F16", "bfloat16": "BF16", "int64": "I64", "int32": "I32", "uint8": "U8",
         "bool": "BOOL"}
ITEM_BYTES = {"F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "U8": 1, "BOOL": 1}
MAX_HEADER_BYTES = 100 * 1024 * 1024  # safetensors' own limit


class ShardError(ValueError):
    """A shard's header is unreadable or disagrees with the manifest (the message says how)."""


def read_header(path: Path) -> tuple[dict, int, os.stat_result]:
    """(header, bytes of tensor data after it, the file's stat) of the regular file at `path`. Opened without
    following links and without blocking, so a file swapped for a link or FIFO after the loader's checks is
    refused, not read. The data starts at byte st_size - data bytes; a header's data_offsets count from there."""
    try:
        handle = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError as error:
        raise ShardError(f"cannot be opened ({error.strerror})") from None
    with os.fdopen(handle, "rb") as shard:
        info = os.fstat(shard.fileno())
        if not stat.S_ISREG(info.st_mode):
            raise ShardError("is not a plain file")
        head = shard.read(8)
        if len(head) < 8:
            raise ShardError("is shorter than a safetensors header")
        length = struct.unpack("<Q", head)[0]
        if length > min(info.st_size - 8, MAX_HEADER_BYTES):
            raise ShardError("declares a header longer than the file")
        try:
            header = json.loads(shard.read(length).decode("utf-8"))
        except (UnicodeDecodeError, ValueError, RecursionError):
            raise ShardError("has a header that is not JSON") from None
    if not isinstance(header, dict):
        raise ShardError("has a header that is not a JSON object")
    return header, info.st_size - 8 - length, info


def identity(info: os.stat_result) -> tuple[int, int, int, int]:
    """What tells one file from another, or from itself rewritten: device, inode, size, modification time."""
    return info.st_dev, info.st_ino, info.st_size, info.st_mtime_ns


def check_entry(header: dict, data_bytes: int, key: str, dtype: str, shape: list[int]) -> tuple[int, int]:
    """The header holds tensor `key` with this dtype and shape, inside the file: its (begin, end) data offsets."""
    found = header.get(key)
    if key == "__metadata__" or not isinstance(found, dict):
        raise ShardError(f"has no tensor {key[:60]!r}")
    offsets = found.get("data_offsets")
    if found.get("dtype") != CODES.get(dtype) or found.get("shape") != shape:
        raise ShardError(f"holds {key[:60]} as {str(found.get('dtype'))[:8]} {str(found.get('shape'))[:60]} but the "
                         f"manifest says {dtype} {shape}")
    if not (isinstance(offsets, list) and len(offsets) == 2 and all(isinstance(v, int) for v in offsets)
            and 0 <= offsets[0] <= offsets[1] <= data_bytes
            and offsets[1] - offsets[0] == math.prod(shape) * ITEM_BYTES[CODES[dtype]]):
        raise ShardError(f"places {key[:60]} outside its data")
    return offsets[0], offsets[1]


def metadata(header: dict) -> dict:
    found = header.get("__metadata__")
    return found if isinstance(found, dict) else {}
