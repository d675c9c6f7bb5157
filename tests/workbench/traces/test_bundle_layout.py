"""The bundle layout: one shard per stack (schema 2), schema-1 bundles (one shard per layer, SHA-256) still read,
checksums catch damaged data in both, and reading one layer reads that layer's bytes only.

The schema-1 bundle is written here by the test's own writer, from the layout's definition (a file per layer
keyed by the bare stat, counts shared by the layers of one mask in tensors/shared.safetensors under the first
layer's full name, a sha256 per file), not by the workbench's writer.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import uuid

import pytest
import torch
from safetensors.torch import save_file

import workbench
from workbench.traces.trace import MemoryTensors, Trace


@pytest.fixture(scope="module")
def traced(models):
    return workbench.trace(models("tiny-llama"), "Layouts old and new", max_new_tokens=2, maps="1:all",
                           hidden_states=True, top_k=2)


def _same(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Same dtype, shape and bytes (NaN included)."""
    return a.dtype == b.dtype and a.shape == b.shape and \
        torch.equal(a.reshape(-1).view(torch.uint8), b.contiguous().reshape(-1).view(torch.uint8))


def write_schema_1(trace, path) -> None:
    """The schema-1 layout, written from its definition: tensors/layer_XX.safetensors keyed by stat,
    tensors/outputs.safetensors, counts that several layers share once in tensors/shared.safetensors."""
    (path / "tensors").mkdir(parents=True)
    bundle_id = uuid.uuid4().hex
    holders: dict[tuple, list[str]] = {}
    for name in trace.tensor_names():
        if name.endswith("_count"):
            tensor = trace.tensor(name)
            holders.setdefault((name.rpartition(".")[2], tensor.numpy().tobytes(), tuple(tensor.shape)), []).append(name)
    shared = {name: names[0] for names in holders.values() if len(names) > 1 for name in names}
    groups: dict[str, dict[str, torch.Tensor]] = {}
    index = {}
    for name in trace.tensor_names():
        tensor = trace.tensor(name).contiguous().clone()
        group, _, stat = name.rpartition(".")
        file, key = ("tensors/shared.safetensors", shared[name]) if name in shared else \
            (f"tensors/{group.replace('.', '_')}.safetensors", stat)
        if name not in shared or shared[name] == name:
            groups.setdefault(file, {})[key] = tensor
        index[name] = {"file": file, "key": key, "dtype": str(tensor.dtype).removeprefix("torch."),
                       "shape": list(tensor.shape), "axes": list(trace.axes(name))}
    files = {}
    for file, tensors in groups.items():
        save_file(tensors, str(path / file), metadata={"workbench_bundle": bundle_id, "workbench_file": file})
        data = (path / file).read_bytes()
        files[file] = {"bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}
    manifest = {"format": "workbench-trace", "schema_version": 1, **json.loads(json.dumps(trace.meta)),
                "bundle_id": bundle_id, "tokens": [token.to_json() for token in trace.tokens], "tensors": index,
                "files": files}
    (path / "manifest.json").write_text(json.dumps(manifest))


def test_the_layout_is_one_shard_per_stack(traced, tmp_path):
    path = traced.save(tmp_path / "new.wbtrace")
    assert sorted(p.name for p in (path / "tensors").iterdir()) == ["text.safetensors"]
    manifest = json.loads((path / "manifest.json").read_text())
    assert manifest["schema_version"] == 2
    assert all(set(info) == {"bytes", "xxh3_128"} for info in manifest["files"].values())
    assert {entry["key"] for name, entry in manifest["tensors"].items() if not name.endswith("_count")} == \
        {name for name in manifest["tensors"] if not name.endswith("_count")}


def test_schema_1_and_schema_2_bundles_read_the_same_tensors(traced, tmp_path):
    old = tmp_path / "old.wbtrace"
    write_schema_1(traced, old)
    assert {p.name for p in (old / "tensors").iterdir()} >= {"layer_00.safetensors", "layer_01.safetensors",
                                                              "outputs.safetensors", "shared.safetensors"}
    new = workbench.load(traced.save(tmp_path / "new.wbtrace"), verify=True)
    before = workbench.load(old, verify=True)
    assert before.tensor_names() == new.tensor_names() == traced.tensor_names()
    for name in traced.tensor_names():
        assert _same(before.tensor(name), traced.tensor(name)), name
        assert _same(new.tensor(name), traced.tensor(name)), name
        if traced.tensor(name).dim() and traced.tensor(name).shape[0]:
            last = traced.tensor(name).shape[0] - 1
            assert _same(before.tensor_slice(name, last), traced.tensor(name)[last]), name
            assert _same(new.tensor_slice(name, last), traced.tensor(name)[last]), name
    assert before.tokens == new.tokens == traced.tokens
    # an old bundle saved again is written in the new layout, same tensors
    again = workbench.load(before.save(tmp_path / "again.wbtrace"), verify=True)
    assert all(_same(again.tensor(name), traced.tensor(name)) for name in traced.tensor_names())


@pytest.mark.parametrize("schema", [1, 2])
def test_a_changed_byte_of_data_fails_the_checksum(traced, tmp_path, schema):
    """A flipped bit inside a tensor's data leaves every header intact: only verify=True can see it."""
    path = tmp_path / "b.wbtrace"
    if schema == 1:
        write_schema_1(traced, path)
    else:
        traced.save(path)
    manifest = json.loads((path / "manifest.json").read_text())
    relative = manifest["tensors"]["layer_01.entropy"]["file"]
    shard = path / relative
    data = bytearray(shard.read_bytes())
    data[-1] ^= 0x01  # the last data byte: a tensor's, not the header's
    shard.write_bytes(bytes(data))
    workbench.load(path)  # the headers still agree with the manifest
    with pytest.raises(workbench.errors.BundleError,
                       match=re.escape(relative.split("/")[1]) + ": does not match its checksum"):
        workbench.load(path, verify=True)


def test_a_file_without_a_checksum_fails_verify(traced, tmp_path):
    path = traced.save(tmp_path / "b.wbtrace")
    manifest = json.loads((path / "manifest.json").read_text())
    del manifest["files"]["tensors/text.safetensors"]["xxh3_128"]
    (path / "manifest.json").write_text(json.dumps(manifest))
    workbench.load(path)
    with pytest.raises(workbench.errors.BundleError, match="has no checksum for 'tensors/text.safetensors'"):
        workbench.load(path, verify=True)


def _stretched(trace, factor: int) -> Trace:
    """The trace with factor x its text layers (layer i holds a copy of layer i mod L's tensors)."""
    tensors, layers = {}, trace.n_layers()
    for name in trace.tensor_names():
        match = re.match(r"^layer_(\d+)\.(.+)$", name)
        copies = range(factor) if match else [None]
        for copy in copies:
            renamed = name if copy is None else f"layer_{int(match[1]) + copy * layers:02d}.{match[2]}"
            tensors[renamed] = (trace.tensor(name).clone(), trace.axes(name))
    meta = json.loads(json.dumps(trace.meta))
    meta["dims"]["stacks"]["text"]["layers"] = layers * factor
    meta["capture"]["maps"]["text"]["layers"] = None
    meta["capture"].pop("kernels_run", None)
    return Trace(meta=meta, tokens=trace.tokens, tensors=MemoryTensors(tensors))


def test_reading_one_layer_reads_its_bytes_only_whatever_the_layer_count(traced, tmp_path, monkeypatch):
    """Lazy per layer: the bytes read for layer 1 are that layer's tensors' bytes, in a bundle of L layers and in
    one of 8 L layers alike (counted at the one system call that reads tensor data)."""
    read = []
    real = os.preadv

    def counting(handle, buffers, offset):
        read.append(sum(len(b) for b in buffers))
        return real(handle, buffers, offset)

    expected = sum(t.numel() * t.element_size() for t in traced.layer(1).values())
    for factor in (1, 8):
        loaded = workbench.load(_stretched(traced, factor).save(tmp_path / f"x{factor}.wbtrace"))
        monkeypatch.setattr(os, "preadv", counting)
        read.clear()
        stats = loaded.layer(1)
        monkeypatch.setattr(os, "preadv", real)
        assert sum(read) == expected, factor
        assert all(_same(stats[stat], tensor) for stat, tensor in traced.layer(1).items())


def test_a_read_cut_short_by_the_system_is_continued(traced, tmp_path, monkeypatch):
    """Linux moves at most ~2 GiB per read call: a large tensor arrives in pieces and must still come back whole.
    Simulated with reads capped at 7 bytes."""
    loaded = workbench.load(traced.save(tmp_path / "b.wbtrace"))
    real = os.preadv

    def capped(handle, buffers, offset):
        return real(handle, [memoryview(buffers[0])[:7]], offset)

    monkeypatch.setattr(os, "preadv", capped)
    for name in ("layer_01.maps", "layer_00.entropy", "outputs.next_token_logprob"):
        assert _same(loaded.tensor(name), traced.tensor(name)), name
