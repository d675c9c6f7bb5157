"""Fuzzing the bundle loader: whatever is on disk, loading ends in a usable trace or one BundleError naming a file
of the bundle, in bounded time and memory, without reading anything outside the bundle.

The oracle is independent of the loader: a damaged shard must fail a checksum-verified load (its bytes differ
from the checksum the writer recorded), and every planted link points at a *valid* copy of the bundle's own data
outside it, so a loader that followed the link would load successfully and the test would fail.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import resource
import shutil
import struct
import sys
import tempfile
import time
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import workbench
from workbench.errors import BundleError

# One fixed, derandomized profile: the same examples on every run and machine, and few of them (seconds).
FUZZ = settings(derandomize=True, database=None, deadline=None, max_examples=60, print_blob=True,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
SECONDS_PER_CASE = 5.0  # generous for a loaded 2-core machine; a hang or a giant allocation takes far longer
HOSTILE = ["../escape.safetensors", "/etc/passwd", "tensors/../manifest.json", "tensors/../../outside.safetensors",
           "tensors/link.safetensors", "", None, True, -1, 2**63, 10**30, 1e308, "nan", [], {}, [[[[[]]]]], "\ud800",
           "tensors\\layer_00.safetensors", "tensors/layer_00.safetensors\x00", "float64", "complex128",
           [10**12, 10**12], [-1, 4], [2**62, 2**62, 2**62], ["head"] * 3, "x" * 5000]

_outside_reads: list[str] = []
_watched: list[str] = []


def _audit(event: str, args) -> None:
    """Records every Python-level open of a path under a watched folder (the fuzzed bundle's outside)."""
    if event == "open" and _watched and isinstance(args[0], (str, bytes, os.PathLike)):
        path = os.fsdecode(args[0])
        if any(path.startswith(folder) for folder in _watched):
            _outside_reads.append(path)


sys.addaudithook(_audit)


@pytest.fixture(scope="module")
def template(tmp_path_factory, models):
    """A small bundle with maps, hidden states, top-k lists and an analysis result; and a sibling of the same
    shapes (another prompt of the same length) whose shards are valid but foreign."""
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("fuzz")
    model = models("tiny-gpt2")
    trace = workbench.trace(model, "A small bundle to fuzz", max_new_tokens=2, maps="0:0,1", hidden_states=True,
                            top_k=2)
    trace.add_result("sinks", {"analysis": "sinks", "heads": [[0.5, 0.25]], "note": "planted"})
    trace.save(root / "good.wbtrace")
    other = workbench.trace(model, "A small bundle to buzz", max_new_tokens=2, maps="0:0,1", hidden_states=True,
                            top_k=2)
    other.save(root / "other.wbtrace")
    assert len(other.tokens) == len(trace.tokens)
    return root


@contextlib.contextmanager
def fresh_copy(template: Path):
    """A copy of the good bundle in its own folder, with an `outside/` folder beside it that is watched."""
    with tempfile.TemporaryDirectory(dir=template) as folder:
        folder = Path(folder)
        bundle = folder / "b.wbtrace"
        shutil.copytree(template / "good.wbtrace", bundle)
        outside = folder / "outside"
        shutil.copytree(template / "good.wbtrace", outside)  # valid data: following a link would "work"
        _watched.append(str(outside))
        try:
            yield bundle, outside
        finally:
            _watched.remove(str(outside))


def exercise(root: Path, verify: bool) -> None:
    """Everything a user does with a bundle: load, read every tensor, export JSON, `workbench info`."""
    from workbench.cli.inspect_commands import info

    trace = workbench.load(root, verify=verify)
    for name in trace.tensor_names():
        trace.tensor(name)
    json.dumps(trace.to_json(), ensure_ascii=False).encode("utf-8")
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        info(bundle=root, as_json=False, verify=verify)


def check(root: Path, *, verify: bool = True, must_fail: bool = False) -> str | None:
    """Run `exercise`; return the BundleError message (None if it loaded), asserting the contract."""
    started = time.perf_counter()
    _outside_reads.clear()
    message = None
    try:
        exercise(root, verify)
    except BundleError as error:
        message = str(error)
    elapsed = time.perf_counter() - started
    assert elapsed < SECONDS_PER_CASE, f"took {elapsed:.1f} s"
    assert not _outside_reads, f"read outside the bundle: {_outside_reads}"
    if message is not None:
        assert message.startswith(str(root)), f"the error does not name a file of the bundle: {message}"
        assert "\n" not in message and len(message) < 600, message
    assert not (must_fail and message is None), "a damaged bundle loaded without an error"
    return message


def _files(bundle: Path) -> list[str]:
    return sorted(p.relative_to(bundle).as_posix() for p in bundle.rglob("*") if p.is_file())


@FUZZ
@given(data=st.data())
def test_random_byte_damage_is_refused(template, data):
    """Overwrite, truncate, extend or delete any file: a checksum-verified load refuses every change to a shard."""
    with fresh_copy(template) as (bundle, _):
        relative = data.draw(st.sampled_from(_files(bundle)), label="file")
        path = bundle / relative
        original = path.read_bytes()
        action = data.draw(st.sampled_from(["overwrite", "truncate", "extend", "delete"]), label="action")
        if action == "overwrite":
            offset = data.draw(st.integers(0, len(original) - 1), label="offset")
            patch = data.draw(st.binary(min_size=1, max_size=16), label="bytes")
            damaged = original[:offset] + patch + original[offset + len(patch):]
        elif action == "truncate":
            damaged = original[:data.draw(st.integers(0, len(original) - 1), label="length")]
        elif action == "extend":
            damaged = original + data.draw(st.binary(min_size=1, max_size=64), label="tail")
        else:
            damaged = None
        if damaged is None:
            path.unlink()
        else:
            path.write_bytes(damaged)
        changed = damaged != original
        # Shards are covered by their checksums; the manifest and results may stay valid JSON (then they load).
        check(bundle, must_fail=changed and relative.startswith("tensors/"))
        if relative.startswith("tensors/") and action in ("truncate", "extend", "delete"):
            check(bundle, verify=False, must_fail=True)  # sizes are checked on every load


def _walk(data, value, depth: int = 0):
    """Draw a (container, key) inside a JSON value, preferring the fields the loader must distrust."""
    while depth < 5 and isinstance(value, (dict, list)) and value:
        keys = list(value) if isinstance(value, dict) else list(range(min(len(value), 4)))
        key = data.draw(st.sampled_from(keys))
        stop = not isinstance(value[key], (dict, list)) or not value[key] or data.draw(st.booleans())
        if stop:
            return value, key
        value, depth = value[key], depth + 1
    return None


@FUZZ
@given(data=st.data())
def test_hostile_manifest_values_are_refused(template, data):
    """Replace any manifest value with a hostile one (paths out of the bundle, absurd sizes, wrong types, lone
    surrogates), or add files / tensors with hostile names: never anything but a BundleError, never a read outside."""
    with fresh_copy(template) as (bundle, outside):
        os.symlink(outside / "tensors" / "text.safetensors", bundle / "tensors" / "link.safetensors")
        manifest_path = bundle / "manifest.json"
        manifest = json.loads(manifest_path.read_text())
        for _ in range(data.draw(st.integers(1, 3), label="edits")):
            hostile = data.draw(st.sampled_from(HOSTILE), label="value")
            how = data.draw(st.sampled_from(["replace", "add file", "repoint tensor"]), label="how")
            if how == "replace":
                spot = _walk(data, manifest)
                if spot is not None:
                    spot[0][spot[1]] = hostile
            elif how == "add file" and isinstance(manifest.get("files"), dict) and isinstance(hostile, str):
                manifest["files"][hostile] = {"bytes": data.draw(st.sampled_from([0, 1, 2**40, -5])), "sha256": ""}
            elif how == "repoint tensor" and isinstance(manifest.get("tensors"), dict) and manifest["tensors"]:
                name = data.draw(st.sampled_from(sorted(manifest["tensors"])))
                if isinstance(manifest["tensors"][name], dict):
                    manifest["tensors"][name]["file"] = hostile
                    if isinstance(hostile, str) and isinstance(manifest.get("files"), dict):
                        manifest["files"][hostile] = {"bytes": 10, "sha256": ""}
        manifest_path.write_text(json.dumps(manifest, ensure_ascii=False), encoding="utf-8", errors="surrogatepass")
        check(bundle, verify=data.draw(st.booleans(), label="verify"))


def _link(target: Path, link: Path) -> None:
    if link.is_dir() and not link.is_symlink():
        shutil.rmtree(link)
    elif link.exists() or link.is_symlink():
        link.unlink()
    os.symlink(target, link)


def _safetensors(header: dict, data: bytes = b"", header_length: int | None = None) -> bytes:
    text = json.dumps(header).encode()
    return struct.pack("<Q", len(text) if header_length is None else header_length) + text + data


def _replace_shard(bundle: Path, relative: str, content: bytes) -> None:
    """Put `content` in a shard and update the manifest's byte size (and checksum) so only the content is wrong."""
    import xxhash

    (bundle / relative).write_bytes(content)
    manifest = json.loads((bundle / "manifest.json").read_text())
    manifest["files"][relative] = {"bytes": len(content), "xxh3_128": xxhash.xxh3_128(content).hexdigest()}
    (bundle / "manifest.json").write_text(json.dumps(manifest))


SHARD = "tensors/text.safetensors"
DAMAGE = {
    "manifest is a link to a valid manifest outside": lambda b, o: _link(o / "manifest.json", b / "manifest.json"),
    "tensors/ is a link to valid shards outside": lambda b, o: _link(o / "tensors", b / "tensors"),
    "a shard is a link to a valid shard outside": lambda b, o: _link(o / SHARD, b / SHARD),
    "results/ is a link outside": lambda b, o: _link(o / "results", b / "results"),
    "a result is a link outside": lambda b, o: _link(o / "results" / "sinks.json", b / "results" / "sinks.json"),
    "a result is a FIFO (would block)": lambda b, o: ((b / "results" / "sinks.json").unlink(),
                                                      os.mkfifo(b / "results" / "sinks.json")),
    "a shard is a FIFO (would block)": lambda b, o: ((b / SHARD).unlink(), os.mkfifo(b / SHARD)),
    "a result is a folder": lambda b, o: ((b / "results" / "sinks.json").unlink(),
                                          (b / "results" / "sinks.json").mkdir()),
    "a shard listed again under another name": lambda b, o: _replace_shard(
        b, "tensors/vision.safetensors", (b / SHARD).read_bytes()),
    "a shard copied from another bundle of the same shapes": lambda b, o: shutil.copy(
        b.parent.parent / "other.wbtrace" / SHARD, b / SHARD),
    "shard header declares a 2**63-byte header": lambda b, o: _replace_shard(
        b, SHARD, _safetensors({}, header_length=2**63)),
    "shard header declares a tensor far past the file": lambda b, o: _replace_shard(b, SHARD, _safetensors(
        {"key_mass": {"dtype": "F32", "shape": [2**31, 2**31], "data_offsets": [0, 2**62]}}, b"\0" * 64)),
    "shard header is not JSON": lambda b, o: _replace_shard(b, SHARD, struct.pack("<Q", 8) + b"\xff" * 8),
    "manifest tokens are not UTF-8": lambda b, o: (b / "manifest.json").write_bytes(
        (b / "manifest.json").read_bytes().replace(b'"text": "', b'"text": "\xff\xfe', 1)),
    "a token is a lone surrogate": lambda b, o: (b / "manifest.json").write_bytes(
        (b / "manifest.json").read_bytes().replace(b'"text": "', b'"text": "\\udc80', 1)),
    "a 5,000-digit number": lambda b, o: (b / "manifest.json").write_bytes(
        (b / "manifest.json").read_bytes().replace(b'"schema_version": 2', b'"schema_version": ' + b"9" * 5000)),
    "nesting 100,000 deep": lambda b, o: (b / "manifest.json").write_bytes(b"[" * 100_000 + b"]" * 100_000),
    "declared shard size of an exabyte": lambda b, o: (b / "manifest.json").write_text(
        (b / "manifest.json").read_text().replace('"bytes": ', '"bytes": 1000000000000000000', 1)),
}


@pytest.mark.parametrize("damage", sorted(DAMAGE))
def test_links_special_files_and_foreign_shards_are_refused(template, damage):
    with fresh_copy(template) as (bundle, outside):
        check(bundle, must_fail=False)  # the copy is fine before the damage
        DAMAGE[damage](bundle, outside)
        check(bundle, verify=False, must_fail=True)
        check(bundle, verify=True, must_fail=True)


def test_fuzzing_stays_within_bounded_memory(template):
    """A few hundred loads of damaged bundles (absurd declared sizes included) grow the peak RSS by little."""
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    for name in ("shard header declares a tensor far past the file", "declared shard size of an exabyte"):
        for _ in range(20):
            with fresh_copy(template) as (bundle, outside):
                DAMAGE[name](bundle, outside)
                check(bundle, verify=False, must_fail=True)
    grown_mb = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
    assert grown_mb < 200, f"peak memory grew by {grown_mb:.0f} MB"
