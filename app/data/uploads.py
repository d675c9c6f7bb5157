"""Images uploaded through the trace form, kept in a folder of the app's own and bounded in age and total size.

An upload is stored as `<traces>/.uploads/<sha256>.<ext>` (content-addressed: the browser only ever holds
that name, never a path it chose) and stays while the tab may still trace with it. Every store prunes the
folder: files older than `max_age` seconds go, then the oldest until the folder is under `max_bytes`, never
one a queued or running job still needs. A trace bundle embeds its input image, so a finished trace does not
need the upload. Only files named like an upload are ever deleted; nothing else in the folder is touched.
"""

from __future__ import annotations

import hashlib
import re
import threading
import time
from collections.abc import Callable
from pathlib import Path

from workbench.errors import InputError

FOLDER = ".uploads"
MAX_AGE_S = 3600.0
MAX_BYTES = 64 * 1024 * 1024  # eight uploads at the 8 MB limit
_NAME = re.compile(r"^[0-9a-f]{64}\.(png|jpg|webp|gif|bmp)$")


class Uploads:
    def __init__(self, root: Path, *, max_age: float = MAX_AGE_S, max_bytes: int = MAX_BYTES,
                 in_use: Callable[[], set[Path]] = set):
        self.folder = Path(root) / FOLDER
        self.max_age = max_age
        self.max_bytes = max_bytes
        self.in_use = in_use  # paths pending trace jobs still read
        self._lock = threading.Lock()

    def store(self, data: bytes, extension: str) -> Path:
        """Save checked upload bytes; returns the stored path (its name is what the browser keeps)."""
        path = self.folder / f"{hashlib.sha256(data).hexdigest()}{extension}"
        with self._lock:
            try:
                self.folder.mkdir(parents=True, exist_ok=True)
                if path.exists():
                    path.touch()  # a re-upload counts as new for the age limit
                else:
                    temporary = self.folder / f".{path.name}.tmp"
                    temporary.write_bytes(data)
                    temporary.replace(path)
            except OSError as error:
                raise InputError(f"cannot save the upload ({error.strerror or error}); the traces folder must be "
                                 "writable to trace from the app") from None
            self._prune(keep=path)
        return path

    def get(self, name) -> Path | None:
        """The stored upload of that name (as the browser sent it back), or None when it is gone or malformed."""
        if not isinstance(name, str) or not _NAME.match(name):
            return None
        path = self.folder / name
        return path if path.is_file() else None

    def prune(self) -> None:
        with self._lock:
            self._prune(keep=None)

    def _prune(self, keep: Path | None) -> None:
        try:
            entries = [(path.stat().st_mtime, path.stat().st_size, path) for path in self.folder.iterdir()
                       if _NAME.match(path.name) and path.is_file() and not path.is_symlink()]
        except OSError:
            return
        protected = {keep, *self.in_use()}
        now = time.time()
        entries.sort(key=lambda entry: entry[0])  # oldest first
        total = sum(size for _, size, _ in entries)
        for mtime, size, path in entries:
            if path in protected:
                continue
            if now - mtime > self.max_age or total > self.max_bytes:
                path.unlink(missing_ok=True)
                total -= size
