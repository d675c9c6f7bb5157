"""Output-path checks done before any work starts, so nothing the user has is overwritten by surprise."""

from __future__ import annotations

import os
from pathlib import Path

from workbench.errors import OutputExistsError


def check_writable(path: Path, *, force: bool, what: str) -> None:
    """Refuse an existing `path` without force, and a parent folder that is missing or read-only."""
    if path.exists() and not force:
        raise OutputExistsError(f"{what} {path} already exists; choose another path or pass --force to replace it")
    parent = path.expanduser().resolve().parent
    if not parent.is_dir():
        raise OutputExistsError(f"cannot write {what} {path}: the folder {parent} does not exist")
    if not os.access(parent, os.W_OK):
        raise OutputExistsError(f"cannot write {what} {path}: the folder {parent} is not writable")


def write_text_atomic(path: Path, text: str) -> None:
    import tempfile

    path = path.expanduser()
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.resolve().parent)
    try:
        with os.fdopen(handle, "w") as out:
            out.write(text)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def store_result(trace, name: str, data: dict) -> None:
    """trace.add_result (results/NAME.json in the bundle) with a one-line error when the bundle is read-only."""
    from workbench.errors import OutputExistsError

    try:
        trace.add_result(name, data)
    except OSError as error:
        raise OutputExistsError(f"cannot write results/{name}.json into {trace.path} ({error.strerror}); "
                                "pass --no-store or make the bundle writable") from None
