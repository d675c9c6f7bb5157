"""Fault injection: `workbench trace`, `workbench sweep` and `workbench probe train` SIGKILLed at seeded random
moments leave the old state or the complete new one, never a partial result that later reads as complete.

Each run is a real child process (forked from this warm interpreter, so it starts in milliseconds instead of
seconds) running the real CLI entry point; the parent kills it with SIGKILL. The "new" state is checked against
an uninterrupted run of the same command (deterministic with one torch thread), the "old" one against a copy.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import sys
import time
from pathlib import Path

import pytest
import torch

import workbench
from workbench.threads import torch_threads

pytestmark = pytest.mark.skipif(sys.platform == "win32" or not hasattr(os, "fork"), reason="needs fork and SIGKILL")
SEED = 11
KILLS = 3
TIMEOUT = 120.0


def run_cli(args, *, kill_after: float | None = None, kill_when=None) -> tuple[int | None, float]:
    """Run `workbench ARGS` in a forked child; SIGKILL it after `kill_after` s or once `kill_when()` is true.
    Returns (exit code or None if killed, seconds)."""
    started = time.monotonic()
    pid = os.fork()
    if pid == 0:  # the child: never returns into pytest
        code = 1
        try:
            null = os.open(os.devnull, os.O_WRONLY)
            os.dup2(null, 1)
            os.dup2(null, 2)
            torch.set_num_threads(1)
            sys.argv = ["workbench", *map(str, args)]
            from workbench.cli.main import main

            main()
            code = 0
        except SystemExit as exit_:
            code = exit_.code if isinstance(exit_.code, int) else 1
        finally:
            os._exit(code)
    killed = False
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            break
        elapsed = time.monotonic() - started
        if not killed and ((kill_after is not None and elapsed >= kill_after) or (kill_when and kill_when())):
            os.kill(pid, signal.SIGKILL)
            killed = True
        if elapsed > TIMEOUT:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            raise AssertionError(f"workbench {' '.join(map(str, args))} hung")
        time.sleep(0.001)
    seconds = time.monotonic() - started
    if os.WIFSIGNALED(status):
        assert os.WTERMSIG(status) == signal.SIGKILL
        return None, seconds
    return os.WEXITSTATUS(status), seconds


def delays(total: float, n: int = KILLS) -> list[float]:
    """Seeded random kill times spread over a run that takes `total` seconds."""
    rng = random.Random(SEED)
    return sorted(rng.uniform(0.05, 1.0) * total for _ in range(n))


class WriteStarted:
    """True `offset` seconds after the first entry of `folder` is created, renamed or removed: a kill aimed at
    the writing phase, which random delays over a whole run hit only rarely."""

    def __init__(self, folder: Path, offset: float):
        self.folder, self.offset = folder, offset
        self.before = folder.stat().st_mtime_ns
        self.seen: float | None = None

    def __call__(self) -> bool:
        if self.seen is None and self.folder.stat().st_mtime_ns != self.before:
            self.seen = time.monotonic()
        return self.seen is not None and time.monotonic() - self.seen >= self.offset


def write_offsets(n: int = KILLS) -> list[float]:
    rng = random.Random(SEED + 1)
    return [0.0] + sorted(rng.uniform(0.0, 0.03) for _ in range(n - 1))


def visible(folder: Path) -> set[str]:
    """What a user (or the app's catalog) sees: hidden staging and temporary names excluded."""
    return {p.name for p in folder.iterdir() if not p.name.startswith(".")}


def same_tensors(a, b) -> bool:
    return a.tensor_names() == b.tensor_names() and all(
        torch.equal(torch.nan_to_num(a.tensor(n)), torch.nan_to_num(b.tensor(n))) for n in a.tensor_names())


@pytest.fixture(autouse=True)
def _one_thread():
    with torch_threads(1):
        yield


# ------------------------------------------------------------------------------------------------------- trace
def test_killed_trace_leaves_the_old_bundle_or_the_complete_new_one(tmp_path, models):
    models("tiny-llama")  # warm the parent: children inherit imported modules
    old_folder, work, reference = tmp_path / "old", tmp_path / "work", tmp_path / "reference"
    for folder in (old_folder, work, reference):
        folder.mkdir()
    workbench.trace("tiny-llama", "The old bundle", max_new_tokens=2, maps="all").save(old_folder / "t.wbtrace")
    (old_folder / "t.json").write_text('{"old": true}')
    command = ["trace", "-m", "tiny-llama", "-p", "A new prompt replaces the old one", "-n", "6", "--maps", "all",
               "--hidden", "--force"]
    code, total = run_cli([*command, "--out", reference / "t.wbtrace", "--json", reference / "t.json"])
    assert code == 0
    new, old = workbench.load(reference / "t.wbtrace"), workbench.load(old_folder / "t.wbtrace")
    new_json = json.loads((reference / "t.json").read_text())

    outcomes = []
    for delay, offset in [*((d, None) for d in delays(total)), *((None, o) for o in write_offsets())]:
        shutil.rmtree(work / "t.wbtrace", ignore_errors=True)
        shutil.copytree(old_folder / "t.wbtrace", work / "t.wbtrace")
        shutil.copy(old_folder / "t.json", work / "t.json")
        watch = WriteStarted(work, offset) if offset is not None else None
        code, _ = run_cli([*command, "--out", work / "t.wbtrace", "--json", work / "t.json"], kill_after=delay,
                          kill_when=watch)
        assert visible(work) == {"t.wbtrace", "t.json"}
        found = workbench.load(work / "t.wbtrace", verify=True)  # never corrupt, never missing
        if found.meta["inputs"]["prompt"] == old.meta["inputs"]["prompt"]:
            outcomes.append("old")
            assert same_tensors(found, old)
        else:
            outcomes.append("new")
            assert same_tensors(found, new) and found.tokens == new.tokens
        exported = json.loads((work / "t.json").read_text())  # the JSON export is old or complete, too
        assert exported == {"old": True} or {**exported, "created": None} == {**new_json, "created": None} or \
            exported.get("tokens") == new_json["tokens"]
        assert code in (None, 0), code
    assert outcomes[len(delays(total))] == "old"  # killed as the first write began


# ------------------------------------------------------------------------------------------------------- sweep
def test_killed_sweep_never_reads_partial_as_complete_and_resumes_exactly(tmp_path, models):
    from tests.scale.conftest import PROMPTS, write_jsonl
    from workbench.scale import SweepStore

    models("tiny-gpt2")
    n = 12
    data = write_jsonl(tmp_path / "inputs.jsonl", [f"{PROMPTS[i % len(PROMPTS)]} ({i})" for i in range(n)])
    command = ["sweep", "-m", "tiny-gpt2", "--data", data, "--batch-size", "2", "--max-new-tokens", "1",
               "--threads", "1"]
    code, total = run_cli([*command, "--out", tmp_path / "reference"])
    assert code == 0
    reference = SweepStore(tmp_path / "reference")
    out = tmp_path / "work"
    for delay in delays(total):
        code, _ = run_cli([*command, "--out", out], kill_after=delay)
        if not out.exists():
            continue
        store = SweepStore(out)
        inputs = store.read_inputs()
        indices = inputs.column("index").to_pylist()
        assert len(indices) == len(set(indices)), "an input was committed twice"
        heads = store.read_heads()
        if heads is not None:  # every committed input has all its 3 layers x 4 heads, none half-written
            per_input = {}
            for index in heads.column("index").to_pylist():
                per_input[index] = per_input.get(index, 0) + 1
            assert set(per_input) <= set(indices) and set(per_input.values()) == {12}
        if (out / "summary.json").exists():  # the only "complete" signal: it must mean complete
            assert sorted(indices) == list(range(n)) and (out / "aggregates" / "layers.parquet").exists()
        assert code in (None, 0)
    code, _ = run_cli([*command, "--out", out])  # resume to the end
    assert code == 0
    final = SweepStore(out)
    columns = [c for c in reference.read_heads().column_names]
    assert final.read_heads().select(columns).to_pylist() == reference.read_heads().select(columns).to_pylist()
    assert final.read_inputs().drop_columns(["seconds"]).to_pylist() == \
        reference.read_inputs().drop_columns(["seconds"]).to_pylist()


# --------------------------------------------------------------------------------------------------- probe train
def test_killed_probe_training_leaves_the_old_probe_or_the_complete_new_one(tmp_path, models):
    import numpy as np
    import pyarrow.parquet as pq
    from workbench.probes import dataset
    from workbench.probes.probe import Probe

    from tests.probes.conftest import short_kv_items
    from tests.probes.labels import with_labels

    dataset.build(models("tiny-llama"), short_kv_items(40, seed=3), tmp_path / "built.parquet", max_new_tokens=4,
                  embed=False)
    data = dataset.load(tmp_path / "built.parquet")
    pq.write_table(with_labels(data, np.random.RandomState(0).randint(0, 2, len(data))).table, tmp_path / "kv.parquet")
    command = ["probe", "train", "--data", tmp_path / "kv.parquet", "--features", "window", "--window", "4",
               "--test-fraction", "0.4", "--force"]
    assert run_cli([*command, "--seed", "1", "--out", tmp_path / "old.probe"])[0] == 0
    code, total = run_cli([*command, "--seed", "0", "--out", tmp_path / "new.probe", "--json", tmp_path / "new.json"])
    assert code == 0
    old, new = Probe.load(tmp_path / "old.probe"), Probe.load(tmp_path / "new.probe")
    work = tmp_path / "work"
    work.mkdir()
    for delay, offset in [*((d, None) for d in delays(total)), *((None, o) for o in write_offsets())]:
        shutil.copy(tmp_path / "old.probe", work / "p.probe")
        (work / "p.json").unlink(missing_ok=True)
        watch = WriteStarted(work, offset) if offset is not None else None
        code, _ = run_cli([*command, "--seed", "0", "--out", work / "p.probe", "--json", work / "p.json"],
                          kill_after=delay, kill_when=watch)
        assert code in (None, 0)
        assert visible(work) <= {"p.probe", "p.json"} and "p.probe" in visible(work)
        found = Probe.load(work / "p.probe")
        expected = new if found.config["split"]["seed"] == 0 else old
        assert found.config["split"]["seed"] in (0, 1)
        assert set(found.stored.tensors) == set(expected.stored.tensors)
        assert all(np.array_equal(found.stored.tensors[k], expected.stored.tensors[k]) for k in expected.stored.tensors)
        if (work / "p.json").exists():
            assert json.loads((work / "p.json").read_text())["probe"] == str(work / "p.probe")
