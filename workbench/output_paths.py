"""The one policy for paths the workbench writes to, checked before any model loads or any work starts.

- The folder an output goes into must exist, be writable and not be a system folder (/proc, /sys, /dev),
  so a run never does its work and then fails to save it.
- Something already at the path is refused without `force`; with `force` it is replaced only when the
  workbench wrote it (each kind of output says how to recognise its own: a bundle's manifest, a probe's
  metadata, ...): a user's own files and folders are never deleted or overwritten.

The CLI's wrappers (bundles, JSON files, standard output) are in workbench/cli/paths.py; the writers of
probes and datasets call `check_output` themselves, so the Python API keeps the same promise.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

from workbench.errors import OutputExistsError

SYSTEM_FOLDERS = (Path("/proc"), Path("/sys"), Path("/dev"))


def check_place(path: Path, *, what: str) -> Path:
    """Check that something may be created at `path`: its folder exists, is writable and is not a system
    folder. Returns `path` with `~` expanded."""
    path = Path(path).expanduser()
    parent = path.resolve().parent
    if any(parent == folder or folder in parent.parents for folder in SYSTEM_FOLDERS):
        raise OutputExistsError(f"cannot write {what} {path}: {parent} is a system folder; choose a path in "
                                "your own folders")
    if not parent.is_dir():
        raise OutputExistsError(f"cannot write {what} {path}: the folder {parent} does not exist")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise OutputExistsError(f"cannot write {what} {path}: the folder {parent} is not writable")
    return path


def check_output(path: Path, *, force: bool, what: str, ours: Callable[[Path], bool], ours_is: str) -> Path:
    """check_place, then the rule for what is already there: refused without `force`; with it, replaced only
    when `ours(path)` says the workbench wrote it (`ours_is` names such a thing in the refusal)."""
    path = check_place(path, what=what)
    if path.exists() or path.is_symlink():
        if not force:
            raise OutputExistsError(f"{what} {path} already exists; choose another path or pass --force to "
                                    "replace it")
        if not ours(path):
            raise OutputExistsError(f"{path} is not {ours_is}; --force replaces only what the workbench wrote, so "
                                    "choose another path")
    return path


def output_folder(folder: Path, *, what: str) -> Path:
    """A folder that outputs go into (e.g. one bundle per prompt): an existing folder is used as it is (each
    output in it is checked on its own), a missing one is created in a writable place."""
    folder = Path(folder).expanduser()
    if folder.is_dir() and not folder.is_symlink():
        if not os.access(folder, os.W_OK | os.X_OK):
            raise OutputExistsError(f"cannot write into {what} {folder}: it is not writable")
        return folder
    if folder.exists() or folder.is_symlink():
        raise OutputExistsError(f"{what} {folder} exists and is not a folder; choose another path")
    check_place(folder, what=what).mkdir()
    return folder
