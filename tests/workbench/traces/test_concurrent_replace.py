"""A reader and a writer on one bundle path: while another process replaces the bundle with `save(force=True)` in a
loop, every `workbench.load(..., verify=True)` must return the old or the new bundle, whole, never a corruption
error (nothing on disk is ever corrupt). A trace loaded before a replacement says so when it reads a shard later.

The oracle is the two source bundles: each loaded trace must equal one of them in its prompt, token count and
the key_mass of layer 0, compared with tensors read from the sources by this test.
"""

from __future__ import annotations

import multiprocessing
import shutil
import time
from pathlib import Path

import pytest
import torch

import workbench
from workbench.errors import BundleError

READ_SECONDS = 8.0


def _replace_in_a_loop(sources: list[str], target: str, seconds: float, ready, writes) -> None:
    """Child process: save the two sources over `target` alternately for `seconds`."""
    import workbench as wb

    traces = [wb.load(source) for source in sources]
    ready.set()
    end, count = time.monotonic() + seconds, 0
    while time.monotonic() < end:
        traces[count % 2].save(target, force=True)
        count += 1
    writes.value = count


@pytest.fixture(scope="module")
def sources(tmp_path_factory, models):
    """Two bundles of different shapes (a writer replacing one with the other changes every file's size)."""
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("replace")
    model = models("tiny-gpt2")
    workbench.trace(model, "the first bundle", max_new_tokens=2, maps="0:all").save(root / "a.wbtrace")
    workbench.trace(model, "and a second, longer bundle than that", max_new_tokens=4).save(root / "b.wbtrace")
    return root


def _expected(root: Path) -> dict[str, tuple[int, torch.Tensor]]:
    out = {}
    for name in ("a", "b"):
        trace = workbench.load(root / f"{name}.wbtrace", verify=True)
        out[trace.meta["inputs"]["prompt"]] = (len(trace.tokens), trace.tensor("layer_00.key_mass").clone())
    return out


def test_reader_sees_the_old_or_the_new_bundle_while_a_writer_replaces_it(sources, tmp_path):
    expected = _expected(sources)
    target = tmp_path / "shared.wbtrace"
    workbench.load(sources / "a.wbtrace").save(target)
    context = multiprocessing.get_context("spawn")
    ready, writes = context.Event(), context.Value("i", 0)
    writer = context.Process(target=_replace_in_a_loop, args=(
        [str(sources / "a.wbtrace"), str(sources / "b.wbtrace")], str(target), READ_SECONDS + 2, ready, writes))
    writer.start()
    try:
        assert ready.wait(60), "the writer did not start"
        loads, errors, seen, replaced_reads = 0, [], set(), 0
        end = time.monotonic() + READ_SECONDS
        while time.monotonic() < end:
            try:
                trace = workbench.load(target, verify=True)
            except BundleError as error:
                errors.append(str(error))
                continue
            loads += 1
            prompt = trace.meta["inputs"]["prompt"]
            assert prompt in expected, prompt
            n_tokens, key_mass = expected[prompt]
            assert len(trace.tokens) == n_tokens == trace.dims["stacks"]["text"]["positions"]
            seen.add(prompt)
            try:  # lazily read after the load: the bundle may have been replaced since
                assert torch.equal(trace.tensor("layer_00.key_mass"), key_mass)
            except BundleError as error:
                assert "was replaced (saved again) after this trace was loaded" in str(error), str(error)
                replaced_reads += 1
    finally:
        writer.join(60)
    assert writer.exitcode == 0
    assert not errors, f"{len(errors)} of {loads + len(errors)} loads failed, e.g. {errors[:3]}"
    # The race was really run: many replacements during the reads, and both bundles were seen.
    assert writes.value >= 20 and loads >= 50 and len(seen) == 2, (writes.value, loads, seen)
    print(f"{loads} loads, {writes.value} replacements, {replaced_reads} later reads met a replaced bundle")


def test_a_trace_read_after_its_bundle_was_replaced_says_so(sources, tmp_path):
    """Not "corrupt": the shards now belong to another save, and the message says to load again."""
    target = tmp_path / "t.wbtrace"
    workbench.load(sources / "a.wbtrace").save(target)
    trace = workbench.load(target)
    workbench.load(sources / "b.wbtrace").save(target, force=True)
    with pytest.raises(BundleError, match="was replaced \\(saved again\\) after this trace was loaded; load it again"):
        trace.tensor("layer_00.key_mass")
    assert workbench.load(target, verify=True).meta["inputs"]["prompt"].startswith("and a second")


def test_a_load_reads_one_folder_even_when_the_path_is_swapped_mid_load(sources, tmp_path, monkeypatch):
    """Deterministic form of the race: the folder at the path is exchanged with another bundle between checking
    the index and hashing the shards. Read through its folder handle, the load still gives bundle A whole (one
    attempt allowed, so no restart hides a mix); with restarts allowed it gives bundle B, the one now there."""
    from workbench.traces import reading
    from workbench.traces.swap import exchange

    target, other = tmp_path / "t.wbtrace", tmp_path / "other.wbtrace"
    real_check_index, swaps = reading._check_index, []

    def check_index_then_swap(root, folder, manifest):
        index = real_check_index(root, folder, manifest)
        if root == target and not swaps:
            swaps.append(exchange(target, other))
        return index

    monkeypatch.setattr(reading, "_check_index", check_index_then_swap)
    for attempts, expected in ((1, "the first bundle"), (reading.LOAD_ATTEMPTS, "and a second")):
        for path in (target, other):
            if path.exists():
                shutil.rmtree(path)
        workbench.load(sources / "a.wbtrace").save(target)
        workbench.load(sources / "b.wbtrace").save(other)
        swaps.clear()
        monkeypatch.setattr(reading, "LOAD_ATTEMPTS", attempts)
        trace = workbench.load(target, verify=True)
        if swaps != [True]:
            pytest.skip("this file system cannot exchange two folders atomically")
        assert trace.meta["inputs"]["prompt"].startswith(expected)
        assert len(trace.tokens) == trace.dims["stacks"]["text"]["positions"]
