"""A small thread-safe LRU cache with an item and a byte budget, shared by the app's server-side data.

The Flask server answers requests in threads; a value being computed for one key is computed once while
other threads asking for the same key wait for it (per-key locks), so two users opening the same heavy
layer do not recompute it twice.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable
from typing import Any


def nbytes(value: Any) -> int:
    """Rough memory size of a cached value: tensors/arrays by their buffers, containers recursively."""
    size = getattr(value, "nbytes", None)
    if isinstance(size, int):
        return size
    if hasattr(value, "element_size") and hasattr(value, "numel"):
        return int(value.element_size() * value.numel())
    if isinstance(value, dict):
        return sum(nbytes(v) for v in value.values())
    if isinstance(value, (list, tuple)):
        return sum(nbytes(v) for v in value)
    if hasattr(value, "__dict__"):
        return sum(nbytes(v) for v in vars(value).values())
    return 64


class LRUCache:
    """get_or_compute(key, compute) with eviction by count and by total bytes (nbytes of each value)."""

    def __init__(self, max_items: int = 256, max_bytes: int = 1 << 30):
        self.max_items = max_items
        self.max_bytes = max_bytes
        self._values: OrderedDict[Hashable, tuple[Any, int]] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()
        self._key_locks: dict[Hashable, threading.Lock] = {}
        self.hits = 0
        self.misses = 0

    def get_or_compute(self, key: Hashable, compute: Callable[[], Any]) -> Any:
        with self._lock:
            if key in self._values:
                self._values.move_to_end(key)
                self.hits += 1
                return self._values[key][0]
            key_lock = self._key_locks.setdefault(key, threading.Lock())
        with key_lock:
            with self._lock:  # another thread may have finished it while we waited
                if key in self._values:
                    self._values.move_to_end(key)
                    self.hits += 1
                    return self._values[key][0]
            self.misses += 1
            try:
                value = compute()
            finally:
                with self._lock:
                    self._key_locks.pop(key, None)
            self.put(key, value)
            return value

    def put(self, key: Hashable, value: Any) -> None:
        size = nbytes(value)
        with self._lock:
            if key in self._values:
                self._bytes -= self._values.pop(key)[1]
            if size > self.max_bytes:
                return  # too big to keep; the caller still gets it
            self._values[key] = (value, size)
            self._bytes += size
            while len(self._values) > self.max_items or self._bytes > self.max_bytes:
                _, (_, dropped) = self._values.popitem(last=False)
                self._bytes -= dropped

    def get(self, key: Hashable, default: Any = None) -> Any:
        with self._lock:
            if key in self._values:
                self._values.move_to_end(key)
                return self._values[key][0]
        return default

    def clear(self) -> None:
        with self._lock:
            self._values.clear()
            self._bytes = 0

    @property
    def bytes(self) -> int:
        return self._bytes

    def __len__(self) -> int:
        return len(self._values)
