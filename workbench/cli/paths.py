"""The one output-path policy of the CLI, applied before any model loads or any work starts.

- `-` means standard output wherever a JSON file is expected (and is refused where a folder is).
- The folder an output goes into must exist, be writable and not be a system folder (/proc, /sys, /dev),
  so a run never does its work and then fails to save it.
- Something already at the path is refused without `--force`; with `--force` it is replaced only when the
  workbench wrote it (a bundle whose manifest names our format, a JSON file we export): a user's own
  files and folders are never deleted or overwritten.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path

from workbench.errors import OutputExistsError

STDOUT = "-"
SYSTEM_FOLDERS = (Path("/proc"), Path("/sys"), Path("/dev"))


def is_stdout(path: Path | str | None) -> bool:
    return path is not None and str(path) == STDOUT


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


def check_bundle_output(path: Path, *, force: bool) -> Path:
    from workbench.traces.bundle import looks_like_bundle

    if is_stdout(path):
        raise OutputExistsError("a bundle is a folder and cannot go to standard output; give --out a folder path "
                                "(--json - prints the JSON export)")
    return check_output(path, force=force, what="bundle", ours=looks_like_bundle, ours_is="a trace bundle")


def check_json_output(path: Path | None, *, force: bool) -> Path | None:
    """None and `-` (standard output) pass; a file path goes through the policy above."""
    if path is None or is_stdout(path):
        return path
    if Path(path).expanduser().is_dir():
        raise OutputExistsError(f"--json {path} is a folder; give a file path (or - for standard output)")
    return check_output(path, force=force, what="JSON file", ours=_is_json_file, ours_is="a JSON file")


def _is_json_file(path: Path) -> bool:
    """A plain file that starts like a JSON document: what our exports look like (a user's notes do not)."""
    if path.is_symlink() or not path.is_file():
        return False
    with open(path, "rb") as handle:
        head = handle.read(64).lstrip()
    return head[:1] in (b"{", b"[") or path.stat().st_size == 0


def json_text(data) -> str:
    """Strict JSON (no NaN or Infinity, which other tools reject): non-finite numbers become null."""
    try:
        return json.dumps(data, ensure_ascii=False, indent=1, allow_nan=False)
    except ValueError:
        return json.dumps(_finite(data), ensure_ascii=False, indent=1, allow_nan=False)


def _finite(value):
    if isinstance(value, float):
        return value if value == value and abs(value) != float("inf") else None
    if isinstance(value, dict):
        return {key: _finite(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(item) for item in value]
    return value


def write_json(path: Path | None, data) -> None:
    """Write `data` as strict JSON to `path` (checked earlier by check_json_output); `-` prints it."""
    if path is None:
        return
    text = json_text(data)
    if is_stdout(path):
        print(text)
    else:
        write_text_atomic(Path(path), text + "\n")


def write_text_atomic(path: Path, text: str) -> None:
    import tempfile

    path = path.expanduser()
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.resolve().parent)
    try:
        with os.fdopen(handle, "w") as out:
            out.write(text)
        os.chmod(temporary, 0o644)  # mkstemp's 0600 would differ from the bundles beside it
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def store_result(trace, name: str, data: dict) -> None:
    """trace.add_result (results/NAME.json in the bundle) with a one-line error when the bundle is read-only."""
    try:
        trace.add_result(name, data)
    except OSError as error:
        raise OutputExistsError(f"cannot write results/{name}.json into {trace.path} ({error.strerror}); "
                                "pass --no-store or make the bundle writable") from None
