"""Trace bundles: exact round trip, atomic writes, and a clear BundleError for every kind of damage."""

from __future__ import annotations

import json
import os
import shutil

import pytest
import torch

import workbench
from workbench.errors import BundleError, OutputExistsError


@pytest.fixture(scope="module")
def traced(models):
    return workbench.trace(models("tiny-llama"), "Round trip me", max_new_tokens=3, maps="0,2:1,3",
                           hidden_states=True, head_outputs="last", top_k=2)


@pytest.fixture()
def bundle(traced, tmp_path):
    return traced.save(tmp_path / "t.wbtrace")


def _same(a: torch.Tensor, b: torch.Tensor) -> bool:
    return a.dtype == b.dtype and a.shape == b.shape and torch.equal(torch.nan_to_num(a), torch.nan_to_num(b)) \
        and torch.equal(torch.isnan(a) if a.is_floating_point() else a, torch.isnan(b) if b.is_floating_point() else b)


def test_round_trip_is_exact(traced, bundle):
    loaded = workbench.load(bundle, verify=True)
    assert loaded.tensor_names() == traced.tensor_names()
    for name in traced.tensor_names():
        assert _same(loaded.tensor(name), traced.tensor(name)), name
        assert loaded.axes(name) == traced.axes(name)
    assert loaded.tokens == traced.tokens
    for key in ("model", "inputs", "generation", "dims", "capture", "checks"):
        assert loaded.meta[key] == json.loads(json.dumps(traced.meta[key])), key
    assert loaded.layer(0)["map_heads"].tolist() == [1, 3]
    assert "maps" not in loaded.layer(1)


def test_saved_trace_can_be_saved_again_and_results_persist(bundle, tmp_path):
    loaded = workbench.load(bundle)
    loaded.add_result("example", {"value": 1})
    assert workbench.load(bundle).results == {"example": {"value": 1}}
    copy = loaded.save(tmp_path / "copy.wbtrace")
    again = workbench.load(copy, verify=True)
    assert again.results == {"example": {"value": 1}}
    assert torch.equal(again.tensor("layer_01.key_mass"), loaded.tensor("layer_01.key_mass"))


def test_existing_bundle_is_not_overwritten_without_force(traced, bundle):
    before = {p.name: p.stat().st_mtime_ns for p in (bundle / "tensors").iterdir()}
    with pytest.raises(OutputExistsError):
        traced.save(bundle)
    assert {p.name: p.stat().st_mtime_ns for p in (bundle / "tensors").iterdir()} == before
    traced.save(bundle, force=True)
    workbench.load(bundle, verify=True)
    assert not [p for p in bundle.parent.iterdir() if p.name.startswith(".")], "staging folders left behind"


def _truncation_points(size: int) -> list[int]:
    points = set(range(0, min(size, 64))) | {size - 1, size - 2, size // 2, size // 3}
    points |= set(range(64, size, max(1, size // 40)))
    return sorted(p for p in points if 0 <= p < size)


def test_truncation_at_any_byte_fails_clearly(bundle, tmp_path):
    files = [bundle / "manifest.json"] + sorted((bundle / "tensors").iterdir())
    checked = 0
    for file in files:
        original = file.read_bytes()
        for cut in _truncation_points(len(original)):
            file.write_bytes(original[:cut])
            with pytest.raises(BundleError) as error:
                trace = workbench.load(bundle)
                for name in trace.tensor_names():
                    trace.tensor(name)
            assert file.name in str(error.value)
            checked += 1
        file.write_bytes(original)
    workbench.load(bundle, verify=True)
    assert checked > 100


def _edit_manifest(bundle, edit):
    path = bundle / "manifest.json"
    manifest = json.loads(path.read_text())
    edit(manifest)
    path.write_text(json.dumps(manifest))


@pytest.mark.parametrize("edit,message", [
    (lambda m: m.update(schema_version=99), "newer"),
    (lambda m: m.pop("schema_version"), "schema_version"),
    (lambda m: m.update(format="something"), "not a workbench trace"),
    (lambda m: m["files"].update({"../../etc/passwd": {"bytes": 1}}), "leaves"),
    (lambda m: m["files"].update({"/etc/passwd": {"bytes": 1}}), "leaves"),
    (lambda m: m["files"].update({"tensors/missing.safetensors": {"bytes": 10}}), "missing"),
    (lambda m: m["tensors"]["layer_00.key_mass"].update(shape=[10**9, 10**9]), "cannot hold"),
    (lambda m: m["tensors"]["layer_00.key_mass"].update(dtype="complex128"), "invalid dtype"),
    (lambda m: m["tensors"]["layer_00.key_mass"].update(axes=["head"]), "axes"),
    (lambda m: m["tokens"][0].update(region="nowhere"), "invalid metadata"),
])
def test_manifest_damage_is_named(bundle, edit, message):
    _edit_manifest(bundle, edit)
    with pytest.raises(BundleError, match=message):
        workbench.load(bundle)


def test_shape_lie_is_caught_at_load(bundle):
    """The shard headers are read at load: a manifest shape that disagrees fails before any tensor is used."""
    _edit_manifest(bundle, lambda m: m["tensors"]["layer_00.entropy"].update(shape=[1, 1]))
    with pytest.raises(BundleError, match=r"text.safetensors: holds layer_00.entropy as F32 \[\d+, \d+\] but the "
                                          r"manifest says float32 \[1, 1\]"):
        workbench.load(bundle)


def test_swapped_shards_fail(traced, bundle, tmp_path):
    """A shard of another save of the same trace has the same size and tensors: its bundle id gives it away."""
    other = traced.save(tmp_path / "other.wbtrace")
    shard = bundle / "tensors" / "text.safetensors"
    shard.write_bytes((other / "tensors" / "text.safetensors").read_bytes())
    with pytest.raises(BundleError, match="text.safetensors: belongs to another bundle"):
        workbench.load(bundle)


def test_not_a_bundle(tmp_path):
    with pytest.raises(BundleError, match="no such bundle"):
        workbench.load(tmp_path / "nothing.wbtrace")
    (tmp_path / "empty.wbtrace").mkdir()
    with pytest.raises(BundleError, match="manifest.json"):
        workbench.load(tmp_path / "empty.wbtrace")
    (tmp_path / "binary.wbtrace").mkdir()
    (tmp_path / "binary.wbtrace" / "manifest.json").write_bytes(b"\xff\xfe\x00garbage")
    with pytest.raises(BundleError, match="not valid JSON"):
        workbench.load(tmp_path / "binary.wbtrace")


def test_symlinked_shard_is_refused(bundle, tmp_path):
    shard = bundle / "tensors" / "text.safetensors"
    outside = tmp_path / "outside.safetensors"
    shutil.move(shard, outside)
    os.symlink(outside, shard)
    with pytest.raises(BundleError, match="symbolic link"):
        workbench.load(bundle)


def test_tensor_slice_reads_one_head_with_the_same_checks(traced, bundle, tmp_path):
    loaded = workbench.load(bundle)
    for name in ("layer_00.maps", "layer_02.maps", "layer_01.entropy"):
        for index in range(traced.tensor(name).shape[0]):
            assert _same(loaded.tensor_slice(name, index), traced.tensor(name)[index]), (name, index)
            assert _same(traced.tensor_slice(name, index), traced.tensor(name)[index])
    with pytest.raises(IndexError):
        loaded.tensor_slice("layer_00.maps", 2)  # two heads kept
    with pytest.raises(KeyError):
        loaded.tensor_slice("layer_01.maps", 0)
    other = traced.save(tmp_path / "other.wbtrace")
    shard = bundle / "tensors" / "text.safetensors"
    shard.write_bytes((other / "tensors" / "text.safetensors").read_bytes())  # swapped in after the load
    with pytest.raises(BundleError, match="text.safetensors: changed after the bundle was loaded"):
        loaded.tensor_slice("layer_00.maps", 0)


def test_input_image_travels_inside_the_bundle(models, tmp_path):
    """A VLM bundle holds the pixels the processor saw: the app shows and recomputes with no image file around."""
    from PIL import Image

    from workbench.app.data.images import ImageFinder

    source = tmp_path / "scene.png"
    pixels = torch.randint(0, 256, (30, 40, 3), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    Image.fromarray(pixels.numpy()).save(source)
    saved = workbench.trace(models("tiny-llava"), "What is this?", image=source).save(tmp_path / "v.wbtrace")
    source.unlink()
    loaded = workbench.load(saved, verify=True)
    assert loaded.axes("inputs.image") == ("height", "width", "channel")
    assert torch.equal(torch.from_numpy(__import__("numpy").array(loaded.image())), pixels)
    shown = ImageFinder([tmp_path / "nowhere"]).load(loaded)
    assert shown is not None and shown.size == (40, 30)
    assert workbench.trace(models("tiny-llama"), "no image").image() is None


def test_staging_left_by_a_killed_writer_is_cleaned_on_the_next_save(traced, tmp_path):
    import socket
    import subprocess
    import sys

    from workbench.traces import bundle as bundle_mod

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    host = socket.gethostname()
    stale = tmp_path / f".t.wbtrace.tmp-{host}-{int(dead.stdout)}-abc"
    live = tmp_path / f".t.wbtrace.tmp-{host}-{os.getpid()}-def"  # a writer still running
    remote = tmp_path / f".t.wbtrace.tmp-{host}x-{int(dead.stdout)}-ghi"  # another host on a shared disk
    other = tmp_path / f".u.wbtrace.tmp-{host}-{int(dead.stdout)}-jkl"  # another bundle's writer
    for folder in (stale, live, remote, other):
        (folder / "tensors").mkdir(parents=True)
    bundle_mod._cleaned_parents.clear()
    traced.save(tmp_path / "t.wbtrace")
    assert not stale.exists() and live.exists() and remote.exists() and other.exists()
    assert workbench.load(tmp_path / "t.wbtrace", verify=True).tokens == traced.tokens
