"""The `NAME.wbtrace/` bundle: manifest.json + one safetensors shard per stack + results/*.json. This module
writes it; `reading` loads and checks it (its public names are re-exported here).

Every tensor of a stack sits in that stack's shard under its full name (`layer_05.key_mass`): a bundle is a
handful of files whatever the layer count, and a reader still maps one tensor at a time (safetensors' header
gives each tensor's byte range). A tensor held under several names (the visibility counts that every layer of
one mask shares) is written once, under its first name, and each name's index entry points there. Bundles of
schema 1 (one file per layer, tensors/shared.safetensors, SHA-256 checksums) read the same way, through the index.

Writes go to a hidden staging folder beside the target and are renamed into place (replacing a bundle is
one atomic exchange on Linux), so a crash never leaves a half bundle and a concurrent reader sees the old
bundle or the new one. Manifests and results are written as strict JSON (no NaN or Infinity). No pickle.
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import tempfile
import uuid
from pathlib import Path

import torch

from workbench import strict_json
from workbench.errors import OutputExistsError
from workbench.traces.reading import (  # noqa: F401  (the reader's public names, re-exported)
    CHECKSUM,
    DTYPES,
    MAX_MANIFEST_BYTES,
    MAX_RESULT_BYTES,
    SHARD_BUNDLE,
    SHARD_FILE,
    BundleTensors,
    checksum,
    open_bundle,
    read_manifest,
    sha256,
)
from workbench.traces.schema import FORMAT, MANIFEST, SCHEMA_VERSION
from workbench.traces.swap import exchange

_RESULT_NAME = re.compile(r"^[a-z0-9][a-z0-9_\-]{0,63}$")


def shard_of(name: str) -> str:
    """The shard a tensor is written to: its stack's (`vision.*` the vision tower's, `inputs.*` the input image's,
    the text stack's layers and per-position `outputs.*` the text shard's)."""
    group = name.split(".", 1)[0]
    return f"tensors/{group if group in ('vision', 'inputs') else 'text'}.safetensors"


# ---------------------------------------------------------------------------------------------- writing
def save_bundle(trace, path: Path, *, force: bool = False) -> Path:
    """Write a `Trace` (meta, tokens, tensors, results) as a bundle; `Trace.save` is the public entry.

    >>> import tempfile, workbench
    >>> path = save_bundle(workbench.trace("tiny-gpt2", "The cat sat on the mat"), Path(tempfile.mkdtemp()) / "cat.wbtrace")
    >>> looks_like_bundle(path), sorted(p.name for p in path.iterdir())
    (True, ['manifest.json', 'tensors'])
    >>> parts = open_bundle(path, verify=True)
    >>> sorted(parts), parts["tensors"].axes("layer_00.key_mass"), parts["meta"]["dims"]["stacks"]["text"]["layers"]
    (['meta', 'path', 'results', 'tensors', 'tokens'], ('head', 'key_pos'), 3)
    """
    from safetensors.torch import save_file

    path = path.expanduser()
    if path.exists() or path.is_symlink():
        if not force:
            raise OutputExistsError(f"{path} already exists; choose another --out or pass --force to replace it")
        if not looks_like_bundle(path):
            raise OutputExistsError(f"{path} is not a trace bundle; --force replaces only bundles the workbench "
                                    "wrote, so choose another path")
    parent = path.parent if str(path.parent) else Path(".")
    if not parent.is_dir():
        raise OutputExistsError(f"cannot write {path}: the folder {parent} does not exist")
    if not os.access(parent, os.W_OK):
        raise OutputExistsError(f"cannot write {path}: the folder {parent} is not writable")
    _remove_stale_staging(parent, path.name)
    staging = Path(tempfile.mkdtemp(prefix=f"{_staging_prefix(path.name)}{os.getpid()}-", dir=parent))
    try:
        os.chmod(staging, 0o755)
        (staging / "tensors").mkdir()
        bundle_id = uuid.uuid4().hex
        groups: dict[str, dict[str, torch.Tensor]] = {}
        index: dict[str, dict] = {}
        tensors = {name: trace.tensor(name).detach().cpu().contiguous() for name in trace.tensor_names()}
        sharing = _names_by_storage(tensors)
        for name, tensor in tensors.items():
            first = sharing.get(_storage_of(tensor), [name])[0]
            file = shard_of(first)
            if name == first:
                groups.setdefault(file, {})[name] = tensor.clone() if tensor.storage_offset() else tensor
            index[name] = {"file": file, "key": first, "dtype": str(tensor.dtype).removeprefix("torch."),
                           "shape": list(tensor.shape), "axes": list(trace.axes(name))}
        files = {}
        for file, tensors in sorted(groups.items()):
            save_file(tensors, str(staging / file), metadata={SHARD_BUNDLE: bundle_id, SHARD_FILE: file})
            files[file] = {"bytes": (staging / file).stat().st_size, CHECKSUM: checksum(staging / file)}
        if trace.results:
            (staging / "results").mkdir()
            for name, data in trace.results.items():
                (staging / "results" / f"{name}.json").write_text(strict_json.dumps(data), encoding="utf-8")
        manifest = {"format": FORMAT, "schema_version": SCHEMA_VERSION, **trace.meta, "bundle_id": bundle_id,
                    "tokens": [token.to_json() for token in trace.tokens], "tensors": index, "files": files}
        # No trailing newline: any truncation of the manifest makes it invalid JSON.
        (staging / MANIFEST).write_text(strict_json.dumps(manifest), encoding="utf-8")
        _swap_into_place(staging, path)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return path


def _storage_of(tensor: torch.Tensor) -> tuple | None:
    """What makes two tensors the very same data (None for empty ones, whose storages all look alike)."""
    if not tensor.numel():
        return None
    return (tensor.untyped_storage().data_ptr(), tensor.storage_offset(), tuple(tensor.shape), tensor.stride(),
            tensor.dtype)


def _names_by_storage(tensors: dict[str, torch.Tensor]) -> dict[tuple, list[str]]:
    """storage -> names, for data held under several names (a capture's count tensors shared by the layers of one
    mask): written once, under the first name in that name's shard, and every name's index entry points there."""
    names: dict[tuple, list[str]] = {}
    for name, tensor in tensors.items():
        storage = _storage_of(tensor)
        if storage is not None:
            names.setdefault(storage, []).append(name)
    return {storage: found for storage, found in names.items() if len(found) > 1}


def looks_like_bundle(path: Path) -> bool:
    """True for a folder the workbench wrote as a bundle (its manifest names our format), even a damaged one,
    so that `--force` may replace it; False for anything else a user could have at that path."""
    manifest = path / MANIFEST
    if path.is_symlink() or not path.is_dir() or manifest.is_symlink() or not manifest.is_file():
        return False
    with open(manifest, "rb") as handle:
        head = handle.read(256)  # the writer puts "format" first
    return f'"format": "{FORMAT}"'.encode() in head


def _staging_prefix(name: str) -> str:
    """Staging folders are named .NAME.tmp-HOST-PID-XXXX: a later save can tell whose writer died."""
    return f".{name}.tmp-{socket.gethostname()}-"


_cleaned_parents: set[Path] = set()


def _remove_stale_staging(parent: Path, name: str) -> None:
    """Delete staging folders of NAME left by killed writers on this host (once per folder and process).

    A staging folder holds either a partial new bundle (the target still has the old one, or none) or, after
    the swap, the old bundle being deleted: never the only copy of anything, so a dead writer's is safe to drop.
    Folders of live processes or of other hosts (a shared filesystem) are left alone.
    """
    key = parent.resolve() / name
    if key in _cleaned_parents:
        return
    _cleaned_parents.add(key)
    prefix = _staging_prefix(name)
    with os.scandir(parent) as entries:
        stale = [entry.path for entry in entries if entry.name.startswith(prefix)
                 and entry.is_dir(follow_symlinks=False) and not _process_alive(entry.name[len(prefix):])]
    for folder in stale:
        shutil.rmtree(folder, ignore_errors=True)


def _process_alive(rest: str) -> bool:
    pid = rest.split("-", 1)[0]
    if not pid.isdigit():
        return True  # not ours to judge
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError):
        return True
    return True


def _swap_into_place(staging: Path, path: Path) -> None:
    if not path.exists():
        os.replace(staging, path)
        return
    if exchange(staging, path):  # atomic: readers see the old bundle or the new one, never neither
        shutil.rmtree(staging, ignore_errors=True)  # now holds the old bundle
        return
    retired = Path(tempfile.mkdtemp(prefix=f".{path.name}.old-", dir=path.parent))
    os.rmdir(retired)
    os.replace(path, retired)
    try:
        os.replace(staging, path)
    except BaseException:
        os.replace(retired, path)  # put the user's bundle back
        raise
    shutil.rmtree(retired, ignore_errors=True)


def check_result_name(name: str) -> None:
    if not _RESULT_NAME.match(name):
        raise ValueError(f"result names are lower-case words (a-z, 0-9, _ or -): got {name!r}")


def write_result(bundle: Path, name: str, data: dict) -> Path:
    """Write results/<name>.json inside an existing bundle atomically (replace the previous one)."""
    check_result_name(name)
    folder = Path(bundle) / "results"
    folder.mkdir(exist_ok=True)
    handle, temporary = tempfile.mkstemp(prefix=f".{name}.", suffix=".tmp", dir=folder)
    with os.fdopen(handle, "w", encoding="utf-8") as out:
        out.write(strict_json.dumps(data))
    os.replace(temporary, folder / f"{name}.json")
    return folder / f"{name}.json"
