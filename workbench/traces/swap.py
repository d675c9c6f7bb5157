"""Atomic exchange of two paths (Linux `renameat2(RENAME_EXCHANGE)`), so replacing a bundle has no moment
where neither the old nor the new one is in place. Elsewhere `exchange` returns False and the caller falls
back to two renames."""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys

_AT_FDCWD = -100
_RENAME_EXCHANGE = 2
_renameat2 = None


def _function():
    global _renameat2
    if _renameat2 is None:
        _renameat2 = False
        if sys.platform.startswith("linux"):
            try:
                libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
                function = libc.renameat2
                function.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
                function.restype = ctypes.c_int
                _renameat2 = function
            except (OSError, AttributeError):  # glibc < 2.28 or another libc
                pass
    return _renameat2


def exchange(a, b) -> bool:
    """Swap the paths `a` and `b` (both must exist) atomically; False when the system cannot, nothing moved."""
    function = _function()
    if not function:
        return False
    if function(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    error = ctypes.get_errno()
    if error in (22, 38, 95):  # EINVAL, ENOSYS, EOPNOTSUPP: the file system or kernel cannot exchange
        return False
    raise OSError(error, os.strerror(error), str(b))
