"""Reading a `NAME.wbtrace/` bundle (the writer is `bundle`): every check runs before a `Trace` exists.

Order matters: the manifest (strict JSON, schema), then every file it names (plain files inside the bundle, of the
declared size), then every shard's header against the manifest's tensor index (dtype, shape, byte range, the
bundle and file it was written for), optionally every sha256, and only then the metadata against those shapes
(`manifest.check_metadata`). Nothing loops over a number from the manifest before the tensors have bounded it.

A load reads one folder: the bundle's directory is opened once and every file is read through that handle
(/proc/self/fd on Linux), so a concurrent `save(force=True)`, which exchanges the whole folder, cannot mix the
old manifest with new shards. The writer then deletes the old folder; a load that loses files to that deletion,
or that finishes after the folder was replaced, starts again on the new one. A reader sees the old bundle or
the new one, never a false corruption error.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import stat
from collections.abc import Callable, Iterator
from pathlib import Path, PurePosixPath

import torch
import xxhash

from workbench import strict_json
from workbench.errors import BundleError
from workbench.traces import shards
from workbench.traces.manifest import check_metadata
from workbench.traces.schema import FORMAT, MANIFEST, SCHEMA_VERSION

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16, "int64": torch.int64,
          "int32": torch.int32, "uint8": torch.uint8, "bool": torch.bool}
MAX_MANIFEST_BYTES = 512 * 1024 * 1024
MAX_RESULT_BYTES = 256 * 1024 * 1024
# Shard metadata naming the bundle and the file it was written as: a shard copied from another bundle, or
# two shards of equal size swapped, fails on load instead of serving the wrong layer.
SHARD_BUNDLE, SHARD_FILE = "workbench_bundle", "workbench_file"
LOAD_ATTEMPTS = 20  # loads restarted because a writer replaced the bundle meanwhile, before giving up


# The files index records each file's checksum under the name of its hash: xxh3_128 since schema 2 (about 10x
# faster than SHA-256, so hashing no longer dominates writing a large bundle), sha256 in schema-1 bundles. Either
# detects damage and any edit of a shard that leaves the manifest alone; neither could stop a deliberate forger,
# who can rewrite the manifest's checksum as easily as the shard.
CHECKSUM = "xxh3_128"
_HASHES = {"xxh3_128": xxhash.xxh3_128, "sha256": hashlib.sha256}


def _digest(path: Path, hash_name: str) -> str:
    digest = _HASHES[hash_name]()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 22), b""):
            digest.update(chunk)
    return digest.hexdigest()


def checksum(path: Path) -> str:
    """The checksum a bundle of this schema records for a file (CHECKSUM)."""
    return _digest(path, CHECKSUM)


def sha256(path: Path) -> str:
    return _digest(path, "sha256")


class BundleTensors:
    """Lazy tensors of a bundle: each read takes only that tensor's bytes (or one slice's) from its shard.

    The loader located every tensor in its shard's header and checked it against the manifest; a read opens the
    shard again, makes sure it is the very file the loader checked (device, inode, size, modification time), and
    reads the byte range. No header is parsed per read, so reading one layer costs the same whatever the number of
    layers (or tensors) a shard holds.
    """

    def __init__(self, root: Path, index: dict[str, dict], bundle_id: str | None, places: dict[str, tuple[int, int]],
                 files: dict[str, tuple]):
        self._root = root
        self._index = index
        self._bundle_id = bundle_id
        self._places = places  # name -> absolute (begin, end) byte range in its shard
        self._files = files  # shard -> identity of the file the loader checked

    def names(self) -> list[str]:
        return sorted(self._index)

    def axes(self, name: str) -> tuple[str, ...]:
        return tuple(self._index[name]["axes"])

    def get(self, name: str, index: int | None = None) -> torch.Tensor:
        """The tensor, or only tensor[index] (just that slice is read from disk) when index is given."""
        entry = self._index[name]
        if index is not None and not 0 <= index < (entry["shape"] or [0])[0]:
            raise IndexError(f"{name}: index {index} outside the first axis of shape {entry['shape']}")
        try:
            return self._read(name, entry, index)
        except BundleError:
            if self._replaced():
                raise BundleError(f"{self._root}: was replaced (saved again) after this trace was loaded; load it "
                                  "again") from None
            raise

    def _read(self, name: str, entry: dict, index: int | None) -> torch.Tensor:
        file = self._root / entry["file"]
        try:
            handle = os.open(file, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
        except OSError as error:
            raise BundleError(f"{file}: unreadable ({error.strerror}); the bundle is incomplete, trace again") from None
        try:
            info = os.fstat(handle)
            if not stat.S_ISREG(info.st_mode):
                raise BundleError(f"{file}: is not a plain file; bundles hold plain files only")
            if shards.identity(info) != self._files.get(entry["file"]):
                raise BundleError(f"{file}: changed after the bundle was loaded; the bundle is corrupt, trace again")
            dtype, shape = DTYPES[entry["dtype"]], list(entry["shape"])
            begin, end = self._places[name]
            if index is not None:
                row = (end - begin) // shape[0]
                begin, end, shape = begin + index * row, begin + (index + 1) * row, shape[1:]
            data = bytearray(end - begin)
            if _read_into(handle, data, begin) != len(data):
                raise BundleError(f"{file}: ends inside {_shown(entry['key'])}; the bundle is corrupt, trace again")
        except OSError as error:
            raise BundleError(f"{file}: unreadable ({error.strerror or error}); the bundle is corrupt, trace "
                              "again") from None
        finally:
            os.close(handle)
        # safetensors stores little-endian, C-order data: the bytes are the tensor.
        return torch.frombuffer(data, dtype=dtype).reshape(shape) if data else torch.empty(shape, dtype=dtype)

    def _replaced(self) -> bool:
        """True when the folder now holds another bundle than the one loaded (asked only after a read failed)."""
        if self._bundle_id is None:
            return False
        try:
            return read_manifest(self._root).get("bundle_id") != self._bundle_id
        except BundleError:
            return False


def _read_into(handle: int, data: bytearray, offset: int) -> int:
    """Fill `data` from the file at `offset`; the bytes read (fewer only at the end of the file). One system call
    moves at most ~2 GiB on Linux, so a large tensor takes several."""
    view, done = memoryview(data), 0
    while done < len(data):
        if hasattr(os, "preadv"):
            got = os.preadv(handle, [view[done:]], offset + done)
        else:  # no positional reads (Windows): seek, then read
            os.lseek(handle, offset + done, os.SEEK_SET)
            got = os.readv(handle, [view[done:]]) if hasattr(os, "readv") else _read_chunk(handle, view[done:])
        if got == 0:
            break
        done += got
    return done


def _read_chunk(handle: int, view: memoryview) -> int:
    chunk = os.read(handle, min(len(view), 1 << 30))
    view[:len(chunk)] = chunk
    return len(chunk)


def _check_identity(file: Path, relative: str, metadata: dict, bundle_id: str | None) -> None:
    if bundle_id is None:  # written before shards named themselves
        return
    if metadata.get(SHARD_BUNDLE) != bundle_id:
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


def _safe_relative(root: Path, folder: Path, relative: object) -> tuple[Path, Path]:
    """(path to read through `folder`, path to name in messages) of a file the manifest names, refusing anything
    that could point outside the bundle."""
    if not isinstance(relative, str) or not relative or "\\" in relative or "\x00" in relative:
        raise _fail(root / MANIFEST, f"invalid file name {_shown(relative)}")
    pure = PurePosixPath(relative)
    if pure.is_absolute() or ".." in pure.parts or pure.parts[0] != "tensors" or len(pure.parts) != 2 \
            or not pure.name.endswith(".safetensors"):
        raise _fail(root / MANIFEST, f"file name {_shown(relative)} leaves the bundle's tensors/ folder")
    for step in ("tensors", relative):  # a linked folder leads outside as surely as a linked file
        if (folder / step).is_symlink():
            raise _fail(root / step, "is a symbolic link; bundles hold plain files only")
    return folder / pure, root / pure


def _plain_file(path: Path) -> os.stat_result | None:
    """The stat of a regular file that is not a link (FIFOs and devices would block or never end), else None."""
    try:
        info = os.lstat(path)
    except OSError:
        return None
    return info if stat.S_ISREG(info.st_mode) else None


def read_manifest(root: Path, folder: Path | None = None) -> dict:
    """The parsed manifest of the bundle at `root` (read through `folder`, an open handle on it, when given)."""
    folder = root if folder is None else folder
    manifest_path = root / MANIFEST
    if not folder.exists():
        raise BundleError(f"{root}: no such bundle; pass a NAME.wbtrace folder written by `workbench trace`")
    if not folder.is_dir() or not (folder / MANIFEST).is_file():
        raise BundleError(f"{root}: not a trace bundle (no {MANIFEST}); pass a folder written by `workbench trace`")
    info = _plain_file(folder / MANIFEST)
    if info is None:
        raise _fail(manifest_path, "is a symbolic link or special file; bundles hold plain files only")
    if info.st_size > MAX_MANIFEST_BYTES:
        raise _fail(manifest_path, "is larger than any manifest can be; the bundle is corrupt")
    try:
        manifest = strict_json.loads((folder / MANIFEST).read_bytes().decode("utf-8"))
    except strict_json.UnsafeNumber as error:
        raise _fail(manifest_path, f"holds a number JSON readers cannot take ({error}); the bundle is corrupt, "
                                   "trace again") from None
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
    bundle_id = manifest.get("bundle_id")
    if bundle_id is not None and not isinstance(bundle_id, str):
        raise _fail(manifest_path, "has an invalid bundle_id; the bundle is corrupt")
    return manifest


def _check_index(root: Path, folder: Path, manifest: dict) -> tuple[dict[str, dict], dict, dict]:
    where = root / MANIFEST
    files, index = manifest.get("files"), manifest.get("tensors")
    if not isinstance(files, dict) or not isinstance(index, dict):
        raise _fail(where, "lacks the files or tensors index; the bundle is corrupt")
    for relative, info in files.items():
        path, shown = _safe_relative(root, folder, relative)
        size = info.get("bytes") if isinstance(info, dict) else None
        if not isinstance(size, int) or isinstance(size, bool) or size < 0:
            raise _fail(where, f"has no byte size for {_shown(relative)}")
        found = _plain_file(path)
        if found is None:
            raise _fail(shown, "is missing or not a plain file; the bundle is incomplete, trace again")
        if found.st_size != size:
            raise _fail(shown, f"has {found.st_size} bytes but should have {_shown(size)}; the bundle is "
                               "truncated or corrupt, trace again")
    for name, entry in index.items():
        if not isinstance(entry, dict) or not isinstance(entry.get("file"), str) or entry["file"] not in files:
            raise _fail(where, f"tensor {_shown(name)} points to a file the bundle does not list")
        shape, dtype, axes = entry.get("shape"), entry.get("dtype"), entry.get("axes")
        if dtype not in DTYPES or not isinstance(shape, list) or \
                not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape):
            raise _fail(where, f"tensor {_shown(name)} has an invalid dtype or shape")
        if not isinstance(axes, list) or len(axes) != len(shape) or not isinstance(entry.get("key"), str):
            raise _fail(where, f"tensor {_shown(name)} has axes that do not match its shape")
        declared = math.prod(shape) * DTYPES[dtype].itemsize
        if declared > files[entry["file"]]["bytes"]:
            raise _fail(root / entry["file"], f"cannot hold tensor {_shown(name)} of {_shown(declared)} bytes; the bundle is corrupt")
    places, identities = _check_shards(root, folder, manifest.get("bundle_id"), files, index)
    return index, places, identities


def _check_shards(root: Path, folder: Path, bundle_id: str | None, files: dict,
                  index: dict[str, dict]) -> tuple[dict[str, tuple[int, int]], dict[str, tuple]]:
    """Every shard's header holds the tensors the index lists (dtype, shape, byte range) and names this bundle.
    Returns where each tensor's bytes lie (name -> absolute begin, end) and each shard's file identity."""
    by_file: dict[str, list[str]] = {}
    for name, entry in index.items():
        by_file.setdefault(entry["file"], []).append(name)
    places, identities = {}, {}
    for relative in files:
        try:
            header, data_bytes, info = shards.read_header(folder / relative)
            _check_identity(root / relative, relative, shards.metadata(header), bundle_id)
            start = info.st_size - data_bytes
            for name in by_file.get(relative, []):
                entry = index[name]
                begin, end = shards.check_entry(header, data_bytes, entry["key"], entry["dtype"], entry["shape"])
                places[name] = (start + begin, start + end)
            identities[relative] = shards.identity(info)
        except shards.ShardError as error:
            raise _fail(root / relative, f"{error}; the bundle is corrupt, trace again") from None
    return places, identities


def _read_results(root: Path, folder: Path) -> dict[str, dict]:
    results = {}
    if (folder / "results").is_symlink():
        raise _fail(root / "results", "is a symbolic link; bundles hold plain files only")
    if (folder / "results").is_dir():
        for file in sorted((folder / "results").glob("*.json")):
            shown = root / "results" / file.name
            if file.name.startswith("."):  # a writer's temporary
                continue
            info = _plain_file(file)
            if info is None:
                raise _fail(shown, "is a symbolic link or special file; bundles hold plain files only")
            if info.st_size > MAX_RESULT_BYTES:
                raise _fail(shown, "is larger than any analysis result can be; rerun that analysis")
            try:
                # Results may hold NaN (a metric undefined for a head); exports turn it into null.
                results[file.stem] = json.loads(file.read_bytes().decode("utf-8"))
                json.dumps(results[file.stem], ensure_ascii=False).encode("utf-8")  # no lone surrogates
            except (UnicodeError, ValueError, RecursionError) as error:
                raise _fail(shown, f"is not valid JSON ({type(error).__name__}); rerun that analysis") from None
    return results


def _open_folder(root: Path, folder: Path, verify: bool) -> dict:
    manifest = read_manifest(root, folder)
    index, places, identities = _check_index(root, folder, manifest)
    if verify:
        for relative, info in manifest["files"].items():
            hash_name = next((name for name in _HASHES if name in info), None)
            if hash_name is None:
                raise _fail(root / MANIFEST, f"has no checksum for {_shown(relative)}; the bundle is corrupt")
            if info[hash_name] != _digest(folder / relative, hash_name):
                raise _fail(root / relative, "does not match its checksum; the bundle is corrupt, trace again")
    tokens, meta = check_metadata(root / MANIFEST, manifest, index)
    return {"meta": meta, "tokens": tokens, "tensors": BundleTensors(root, index, manifest.get("bundle_id"), places, identities),
            "results": _read_results(root, folder), "path": root}


@contextlib.contextmanager
def _pinned(root: Path) -> Iterator[tuple[Path, Callable[[], bool]]]:
    """(a path that reads the folder `root` names now, even after it is renamed or replaced; a function that
    says whether `root` still names that folder). Without /proc (not Linux) the path is `root` itself."""
    try:
        handle = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
    except OSError:  # missing or not a folder: read_manifest names the problem
        yield root, lambda: True
        return
    try:
        opened = os.fstat(handle)
        through = Path(f"/proc/self/fd/{handle}")

        def current() -> bool:
            try:
                now = os.stat(root)
            except OSError:
                return False
            return (now.st_dev, now.st_ino) == (opened.st_dev, opened.st_ino)

        yield (through if through.is_dir() else root), current
    finally:
        os.close(handle)


def open_bundle(path: Path, *, verify: bool = False) -> dict:
    """The checked parts of a `Trace` stored at `path`: meta, tokens, tensors (read lazily per layer),
    results and path. verify=True also checks every file's checksum. `workbench.load` builds the Trace (see the
    example in `bundle.save_bundle`)."""
    root = path.expanduser()
    for attempt in range(LOAD_ATTEMPTS):
        last = attempt == LOAD_ATTEMPTS - 1
        with _pinned(root) as (folder, current):
            try:
                parts = _open_folder(root, folder, verify)
            except OSError as error:  # e.g. a file deleted by the writer replacing this bundle
                if not current() and not last:
                    continue
                raise BundleError(f"{root}: unreadable ({error.strerror or error}); the bundle is corrupt or was "
                                  "being replaced, try again") from None
            except BundleError:
                if not current() and not last:
                    continue  # the folder we read was replaced meanwhile: read the new one
                raise
            if current() or last:  # else the lazy reads to come would meet the new bundle's shards
                return parts
    raise AssertionError("unreachable")
