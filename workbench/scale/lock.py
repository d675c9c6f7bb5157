"""One sweep at a time per output folder: an advisory lock on OUT/.sweep.lock, held for the whole run.

The lock is `flock` on an open file, so the kernel releases it when the holder exits for any reason (SIGKILL
included): a lock left by a dead process is free to take, and two processes racing for a stale lock cannot
both win. The file holds the holder's pid and host, only so the refusal can name them; it is left in place
(deleting a lock file while another process waits on it would let a third take a different file).
"""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path

from workbench.errors import OutputExistsError

LOCK_NAME = ".sweep.lock"


class SweepLock:
    """`with SweepLock(out):` -- refuse (OutputExistsError, one line) while another process holds `out`."""

    def __init__(self, out: Path):
        self.path = Path(out) / LOCK_NAME
        self._fd: int | None = None

    def __enter__(self) -> "SweepLock":
        import fcntl

        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _describe(_read_holder(fd))
            os.close(fd)
            raise OutputExistsError(f"{self.path.parent} is being written by another sweep ({holder}); wait for it "
                                    "to finish or use another --out") from None
        except BaseException:
            os.close(fd)
            raise
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps({"pid": os.getpid(), "host": socket.gethostname()}).encode(), 0)
        self._fd = fd
        return self

    def __exit__(self, *exc) -> None:
        if self._fd is not None:
            os.ftruncate(self._fd, 0)  # the pid is stale from here on; the kernel drops the lock on close
            os.close(self._fd)
            self._fd = None


def _read_holder(fd: int) -> dict:
    try:
        data = json.loads(os.pread(fd, 4096, 0).decode("utf-8", "replace") or "{}")
    except ValueError:
        return {}
    return data if isinstance(data, dict) else {}


def _describe(holder: dict) -> str:
    pid, host = holder.get("pid"), holder.get("host")
    if not isinstance(pid, int):
        return "pid unknown"  # it has just taken the lock and not yet written its pid
    return f"pid {pid}" + (f" on {str(host)[:64]}" if host and host != socket.gethostname() else "")
