"""The long-input heap setting: inside it glibc maps an 8 MiB block on its own (so freeing it returns the pages),
after it the block comes from the heap again; short inputs and a user's own threshold are left alone.

Read from glibc's own counters (mallinfo2: hblks = blocks mapped on their own), not from our code, in a fresh
interpreter: in a process that has run models, free heap fragments serve a block whatever the threshold says
(the threshold only decides how glibc grows), so the counts would say nothing."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from workbench.capture import heap

ROOT = Path(__file__).resolve().parents[3]
libc = heap._glibc()
pytestmark = pytest.mark.skipif(libc is None or not hasattr(libc, "mallinfo2"), reason="needs glibc >= 2.33")

SCENARIO = r"""
import ctypes, json, sys
from workbench.capture import heap

class MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks",
                                                     "fsmblks", "uordblks", "fordblks", "keepcost")]

libc = heap._glibc()
libc.mallinfo2.restype = MallInfo2
libc.malloc.restype = ctypes.c_void_p
libc.free.argtypes = (ctypes.c_void_p,)

def mapped(n_bytes):
    # how many more blocks glibc holds as their own mappings while one malloc(n_bytes) is alive
    libc.malloc_trim(0)
    before = libc.mallinfo2().hblks
    block = libc.malloc(n_bytes)
    during = libc.mallinfo2().hblks
    libc.free(block)
    return during - before

MiB = 1 << 20
counts = {"warm": mapped(16 * MiB)}  # freeing a mapped 16 MiB block lifts glibc's dynamic threshold past it
counts["before"] = mapped(8 * MiB)
with heap.long_input(int(sys.argv[1])):
    counts["during"] = mapped(8 * MiB)
counts["after"] = mapped(8 * MiB)
counts["after_huge"] = mapped(64 * MiB)
print(json.dumps(counts))
"""


def blocks_mapped(n_tokens: int, **env) -> dict:
    done = subprocess.run([sys.executable, "-c", SCENARIO, str(n_tokens)], capture_output=True, text=True,
                          cwd=ROOT, env={**os.environ, **env}, timeout=120, check=True)
    return json.loads(done.stdout)


def test_a_long_input_maps_mid_sized_blocks_and_the_heap_serves_them_again_after(monkeypatch):
    monkeypatch.delenv("MALLOC_MMAP_THRESHOLD_", raising=False)
    counts = blocks_mapped(heap.LONG_INPUT_TOKENS)
    assert counts["before"] == 0  # glibc's dynamic threshold: an 8 MiB block is a heap block
    assert counts["during"] == 1  # mapped on its own: freeing it gives the pages back
    assert counts["after"] == 0  # threshold now 32 MiB: served from the heap again
    assert counts["after_huge"] == 1  # above glibc's ceiling blocks are always mapped


def test_short_inputs_and_a_users_threshold_are_left_alone(monkeypatch):
    monkeypatch.delenv("MALLOC_MMAP_THRESHOLD_", raising=False)
    assert blocks_mapped(heap.LONG_INPUT_TOKENS - 1)["during"] == 0
    assert blocks_mapped(10 * heap.LONG_INPUT_TOKENS, MALLOC_MMAP_THRESHOLD_="33554432")["during"] == 0
