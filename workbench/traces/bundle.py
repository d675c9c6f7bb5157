"""The `NAME.wbtrace/` bundle: manifest.json + per-layer safetensors shards + results/*.json.

Writes go to a hidden staging folder beside the target and are renamed into place (replacing a bundle is
one atomic exchange on Linux), so a crash never leaves a half bundle. Loading checks the schema version, every
file name (no path, symbolic link or special file may lead outside the bundle), declared sizes, dtypes and
shapes, that each shard belongs to this bundle and sits under its own name, and fails with a `BundleError`
that names the file. No pickle.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import shutil
import socket
import stat
import tempfile
import uuid
from pathlib import Path, PurePosixPath

import torch

from workbench.errors import BundleError, OutputExistsError
from workbench.traces.manifest import check_metadata
from workbench.traces.schema import FORMAT, MANIFEST, SCHEMA_VERSION
from workbench.traces.swap import exchange

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16, "int64": torch.int64,
          "int32": torch.int32, "uint8": torch.uint8, "bool": torch.bool}
_RESULT_NAME = re.compile(r"^[a-z0-9][a-z0-9_\-]{0,63}$")
MAX_MANIFEST_BYTES = 512 * 1024 * 1024
MAX_RESULT_BYTES = 256 * 1024 * 1024
# Shard metadata naming the bundle and the file it was written as: a shard copied from another bundle, or
# two shards of equal size swapped, fails on open instead of serving the wrong layer.
SHARD_BUNDLE, SHARD_FILE = "workbench_bundle", "workbench_file"


def _file_of(name: str) -> tuple[str, str]:
    group, _, key = name.rpartition(".")
    return f"tensors/{group.replace('.', '_')}.safetensors", key


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


# ---------------------------------------------------------------------------------------------- writing
def save_bundle(trace, path: Path, *, force: bool = False) -> Path:
    """Write a `Trace` (meta, tokens, tensors, results) as a bundle; `Trace.save` is the public entry."""
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
        for name in trace.tensor_names():
            tensor = trace.tensor(name).detach().cpu().contiguous()
            file, key = _file_of(name)
            groups.setdefault(file, {})[key] = tensor.clone() if tensor.storage_offset() else tensor
            index[name] = {"file": file, "key": key, "dtype": str(tensor.dtype).removeprefix("torch."),
                           "shape": list(tensor.shape), "axes": list(trace.axes(name))}
        files = {}
        for file, tensors in sorted(groups.items()):
            save_file(tensors, str(staging / file), metadata={SHARD_BUNDLE: bundle_id, SHARD_FILE: file})
            files[file] = {"bytes": (staging / file).stat().st_size, "sha256": _sha256(staging / file)}
        if trace.results:
            (staging / "results").mkdir()
            for name, data in trace.results.items():
                (staging / "results" / f"{name}.json").write_text(json.dumps(data))
        manifest = {"format": FORMAT, "schema_version": SCHEMA_VERSION, **trace.meta, "bundle_id": bundle_id,
                    "tokens": [token.to_json() for token in trace.tokens], "tensors": index, "files": files}
        # No trailing newline: any truncation of the manifest makes it invalid JSON.
        (staging / MANIFEST).write_text(json.dumps(manifest, ensure_ascii=False))
        _swap_into_place(staging, path)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return path


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
    with os.fdopen(handle, "w") as out:
        out.write(json.dumps(data))
    os.replace(temporary, folder / f"{name}.json")
    return folder / f"{name}.json"


# ---------------------------------------------------------------------------------------------- reading
class BundleTensors:
    """Lazy tensors of a bundle: each shard is opened (memory-mapped) on first use and checked."""

    def __init__(self, root: Path, index: dict[str, dict], bundle_id: str | None = None):
        self._root = root
        self._index = index
        self._bundle_id = bundle_id

    def names(self) -> list[str]:
        return sorted(self._index)

    def axes(self, name: str) -> tuple[str, ...]:
        return tuple(self._index[name]["axes"])

    def get(self, name: str, index: int | None = None) -> torch.Tensor:
        """The tensor, or only tensor[index] (just that slice is read from disk) when index is given."""
        from safetensors import SafetensorError, safe_open

        entry = self._index[name]
        file = self._root / entry["file"]
        if index is not None and not 0 <= index < (entry["shape"] or [0])[0]:
            raise IndexError(f"{name}: index {index} outside the first axis of shape {entry['shape']}")
        try:
            with safe_open(str(file), framework="pt") as shard:
                self._check_identity(file, entry["file"], shard.metadata() or {})
                if entry["key"] not in shard.keys():
                    raise BundleError(f"{file}: has no tensor {_shown(entry['key'])}; the bundle is corrupt, trace again")
                if index is None:
                    tensor = shard.get_tensor(entry["key"])
                    shape = list(tensor.shape)
                else:
                    piece = shard.get_slice(entry["key"])
                    shape, tensor = list(piece.get_shape()), piece[index]
        except (SafetensorError, OSError, ValueError, RuntimeError) as error:
            raise BundleError(f"{file}: unreadable ({str(error).splitlines()[0]}); the bundle is corrupt, "
                              "trace again") from None
        if str(tensor.dtype).removeprefix("torch.") != entry["dtype"] or shape != entry["shape"]:
            raise BundleError(f"{file}: {entry['key']} is {tensor.dtype} {shape} but the manifest "
                              f"says {entry['dtype']} {entry['shape']}; the bundle is corrupt, trace again")
        return tensor

    def _check_identity(self, file: Path, relative: str, metadata: dict) -> None:
        if self._bundle_id is None:  # written before shards named themselves
            return
        if metadata.get(SHARD_BUNDLE) != self._bundle_id:
            raise BundleError(f"{file}: belongs to another bundle (copied or swapped in); the bundle is corrupt, "
                              "trace again")
        if metadata.get(SHARD_FILE) != relative:
            raise BundleError(f"{file}: was written as {_shown(metadata.get(SHARD_FILE))} (shards swapped); the bundle is "
                              "corrupt, trace again")


def _fail(where: Path, what: str) -> BundleError:
    return BundleError(f"{where}: {what}")


def _shown(value: object) -> str:
    """A manifest value quoted for a message, cut short: a hostile name must not flood the one error line."""
    if isinstance(value, int) and abs(value) >= 10**18:  # repr of a 5,000-digit int raises
        return "an absurdly large number"
    text = repr(value)
    return text if len(text) <= 60 else text[:50] + "...'"


def _safe_relative(root: Path, relative: object) -> Path:
    """The file a manifest names, refusing anything that could point outside the bundle."""
    if not isinstance(relative, str) or not relative or "\\" in relative or "\x00" in relative:
        raise _fail(root / MANIFEST, f"invalid file name {_shown(relative)}")
    pure = PurePosixPath(relative)
    if pure.is_absolute() or ".." in pure.parts or pure.parts[0] != "tensors" or len(pure.parts) != 2 \
            or not pure.name.endswith(".safetensors"):
        raise _fail(root / MANIFEST, f"file name {_shown(relative)} leaves the bundle's tensors/ folder")
    path = root / pure
    for step in (root / "tensors", path):  # a linked folder leads outside as surely as a linked file
        if step.is_symlink():
            raise _fail(step, "is a symbolic link; bundles hold plain files only")
    return path


def _plain_file(path: Path) -> os.stat_result | None:
    """The stat of a regular file that is not a link (FIFOs and devices would block or never end), else None."""
    try:
        info = os.lstat(path)
    except OSError:
        return None
    return info if stat.S_ISREG(info.st_mode) else None


def read_manifest(root: Path) -> dict:
    manifest_path = root / MANIFEST
    if not root.exists():
        raise BundleError(f"{root}: no such bundle; pass a NAME.wbtrace folder written by `workbench trace`")
    if not root.is_dir() or not manifest_path.is_file():
        raise BundleError(f"{root}: not a trace bundle (no {MANIFEST}); pass a folder written by `workbench trace`")
    info = _plain_file(manifest_path)
    if info is None:
        raise _fail(manifest_path, "is a symbolic link or special file; bundles hold plain files only")
    if info.st_size > MAX_MANIFEST_BYTES:
        raise _fail(manifest_path, "is larger than any manifest can be; the bundle is corrupt")
    try:
        manifest = json.loads(manifest_path.read_bytes().decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as error:  # ValueError: JSON, and 5,000-digit ints
        raise _fail(manifest_path, f"is not valid JSON ({type(error).__name__}); the bundle is truncated or "
                                   "corrupt, trace again") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise _fail(manifest_path, "is not a workbench trace manifest")
    version = manifest.get("schema_version")
    if not isinstance(version, int):
        raise _fail(manifest_path, "has no schema_version; the bundle is corrupt")
    if version > SCHEMA_VERSION:
        raise _fail(manifest_path, f"uses schema {_shown(version)}, newer than this workbench reads ({SCHEMA_VERSION}); "
                                   "upgrade the workbench (pip install -U attention-workbench)")
    if version < 1:
        raise _fail(manifest_path, f"uses unknown schema {_shown(version)}")
    return manifest


def _check_index(root: Path, manifest: dict) -> dict[str, dict]:
    where = root / MANIFEST
    files, index = manifest.get("files"), manifest.get("tensors")
    if not isinstance(files, dict) or not isinstance(index, dict):
        raise _fail(where, "lacks the files or tensors index; the bundle is corrupt")
    for relative, info in files.items():
        path = _safe_relative(root, relative)
        size = info.get("bytes") if isinstance(info, dict) else None
        if not isinstance(size, int) or isinstance(size, bool) or size < 0:
            raise _fail(where, f"has no byte size for {_shown(relative)}")
        found = _plain_file(path)
        if found is None:
            raise _fail(path, "is missing or not a plain file; the bundle is incomplete, trace again")
        if found.st_size != size:
            raise _fail(path, f"has {found.st_size} bytes but should have {_shown(size)}; the bundle is "
                              "truncated or corrupt, trace again")
    for name, entry in index.items():
        if not isinstance(entry, dict) or not isinstance(entry.get("file"), str) or entry["file"] not in files:
            raise _fail(where, f"tensor {_shown(name)} points to a file the bundle does not list")
        shape, dtype, axes = entry.get("shape"), entry.get("dtype"), entry.get("axes")
        if dtype not in DTYPES or not isinstance(shape, list) or not all(isinstance(d, int) and d >= 0 for d in shape):
            raise _fail(where, f"tensor {_shown(name)} has an invalid dtype or shape")
        if not isinstance(axes, list) or len(axes) != len(shape) or not isinstance(entry.get("key"), str):
            raise _fail(where, f"tensor {_shown(name)} has axes that do not match its shape")
        declared = math.prod(shape) * DTYPES[dtype].itemsize
        if declared > files[entry["file"]]["bytes"]:
            raise _fail(root / entry["file"], f"cannot hold tensor {_shown(name)} of {_shown(declared)} bytes; the bundle is corrupt")
    return index


def open_bundle(path: Path, *, verify: bool = False) -> dict:
    """The checked parts of a `Trace` stored at `path`: meta, tokens, tensors (read lazily per layer),
    results and path. verify=True also checks every file's sha256. `workbench.load` builds the Trace.

    >>> import tempfile, workbench
    >>> path = workbench.trace("tiny-gpt2", "The cat sat on the mat").save(f"{tempfile.mkdtemp()}/cat.wbtrace")
    >>> parts = open_bundle(path, verify=True)
    >>> sorted(parts), parts["tensors"].axes("layer_00.key_mass"), parts["meta"]["dims"]["stacks"]["text"]["layers"]
    (['meta', 'path', 'results', 'tensors', 'tokens'], ('head', 'key_pos'), 3)
    """
    root = path.expanduser()
    manifest = read_manifest(root)
    index = _check_index(root, manifest)
    if verify:
        for relative, info in manifest["files"].items():
            if info.get("sha256") != _sha256(root / relative):
                raise _fail(root / relative, "does not match its checksum; the bundle is corrupt, trace again")
    tokens, meta = check_metadata(root / MANIFEST, manifest)
    bundle_id = manifest.get("bundle_id")
    if bundle_id is not None and not isinstance(bundle_id, str):
        raise _fail(root / MANIFEST, "has an invalid bundle_id; the bundle is corrupt")
    return {"meta": meta, "tokens": tokens, "tensors": BundleTensors(root, index, bundle_id),
            "results": _read_results(root), "path": root}


def _read_results(root: Path) -> dict[str, dict]:
    results = {}
    folder = root / "results"
    if folder.is_symlink():
        raise _fail(folder, "is a symbolic link; bundles hold plain files only")
    if folder.is_dir():
        for file in sorted(folder.glob("*.json")):
            if file.name.startswith("."):  # a writer's temporary
                continue
            info = _plain_file(file)
            if info is None:
                raise _fail(file, "is a symbolic link or special file; bundles hold plain files only")
            if info.st_size > MAX_RESULT_BYTES:
                raise _fail(file, "is larger than any analysis result can be; rerun that analysis")
            try:
                results[file.stem] = json.loads(file.read_bytes().decode("utf-8"))
                json.dumps(results[file.stem], ensure_ascii=False).encode("utf-8")  # no lone surrogates
            except (UnicodeError, ValueError, RecursionError) as error:
                raise _fail(file, f"is not valid JSON ({type(error).__name__}); rerun that analysis") from None
    return results
