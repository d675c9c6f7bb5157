"""The CLI's outputs, checked before any model loads (the policy itself: workbench/output_paths.py).

`-` means standard output wherever a JSON file is expected (and is refused where a folder is); a bundle is
replaced with `--force` only when it is one (its manifest names our format), a JSON file only when it
holds JSON. JSON is written strict (no NaN or Infinity).
"""

from __future__ import annotations

import os
from pathlib import Path

from workbench.errors import InputError, OutputExistsError
from workbench.output_paths import check_output, check_place, output_folder  # noqa: F401  (re-exported)

STDOUT = "-"


def check_folders(option: str, folders: list[Path] | None) -> list[Path]:
    """Every folder of a repeatable folder option (`--images`, `--allow-model-dir`) exists; they are returned."""
    for folder in folders or []:
        if not folder.is_dir():
            raise InputError(f"{option} {folder} is not a folder")
    return list(folders or [])


def is_stdout(path: Path | str | None) -> bool:
    return path is not None and str(path) == STDOUT


def check_bundle_output(path: Path, *, force: bool) -> Path:
    from workbench.traces.bundle import looks_like_bundle

    if is_stdout(path):
        raise OutputExistsError("a bundle is a folder and cannot go to standard output; give --out a folder path "
                                "(--json - prints the JSON export)")
    return check_output(path, force=force, what="bundle", ours=looks_like_bundle, ours_is="a trace bundle")


def check_json_output(path: Path | None, *, force: bool) -> Path | None:
    """None and `-` (standard output) pass; a file path goes through the policy above. With `-` every later
    report of the command goes to standard error, leaving standard output to the JSON."""
    if path is None:
        return path
    if is_stdout(path):
        from workbench.cli.printing import stdout_carries_data

        stdout_carries_data()
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


def write_json(path: Path | None, data, *, default=None) -> None:
    """Write `data` as strict JSON (non-finite numbers as null; `default` as in json.dumps) to `path` (checked
    earlier by check_json_output); `-` prints it."""
    from workbench import strict_json

    if path is None:
        return
    text = strict_json.dumps(data, indent=1, default=default)
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


def store_result(trace, name: str, data: dict) -> Path | None:
    """trace.add_result (results/NAME.json in the bundle) with a one-line error when the bundle is read-only;
    returns the file written (None for a trace that lives in memory only)."""
    try:
        trace.add_result(name, data)
    except OSError as error:
        raise OutputExistsError(f"cannot write results/{name}.json into {trace.path} ({error.strerror}); "
                                "pass --no-store or make the bundle writable") from None
    return None if trace.path is None else Path(trace.path) / "results" / f"{name}.json"


def where_results_went(stored: Path | None, json_out: Path | str | None) -> str:
    """The one line an analysis command ends with: where its result was written (the bundle's results file, the
    --json file), or that it was kept nowhere. Built from what was actually written, never from the options."""
    places = []
    if stored is not None:
        places.append(f"stored in {stored}")
    if json_out is not None and not is_stdout(json_out):
        places.append(f"JSON written to {json_out}")
    return "; ".join(places) or "not written anywhere (no results file in a bundle, no --json file)"
