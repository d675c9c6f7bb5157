"""SIGKILL a running `workbench sweep`, re-run the same command: no input lost, no row duplicated."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

from workbench.scale import SweepStore, run_sweep

N_INPUTS = 48


def _command(data, out):
    return [sys.executable, "-m", "workbench.cli.main", "sweep", "-m", "tiny-gpt2", "--data", str(data), "--out",
            str(out), "--batch-size", "2", "--max-new-tokens", "1", "--threads", "1"]


def _key_rows(table, keys):
    return [tuple(row[k] for k in keys) for row in table.select(list(keys)).to_pylist()]


@pytest.mark.skipif(sys.platform == "win32", reason="SIGKILL")
def test_sigkill_then_rerun_loses_and_duplicates_nothing(inputs_file, tmp_path):
    data, out = inputs_file(N_INPUTS), tmp_path / "out"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    process = subprocess.Popen(_command(data, out), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    commits = out / "_commits"
    deadline = time.monotonic() + 120
    try:
        # Kill once a few parts are committed, while the sweep is still writing more.
        while time.monotonic() < deadline and process.poll() is None:
            if commits.is_dir() and len(list(commits.glob("part-*.json"))) >= 3:
                break
            time.sleep(0.02)
        assert process.poll() is None, "the sweep finished before it could be killed: " + process.stderr.read().decode()
        os.kill(process.pid, signal.SIGKILL)
    finally:
        process.wait(timeout=30)
    assert process.returncode == -signal.SIGKILL
    partial = SweepStore(out)
    done_before = {index for record in partial.commits() for index in record["inputs"]}
    assert 0 < len(done_before) < N_INPUTS
    assert not (out / "summary.json").exists()

    rerun = subprocess.run(_command(data, out), env=env, capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr
    assert f"resuming: {len(done_before)} of {N_INPUTS} inputs already done" in rerun.stderr

    store = SweepStore(out)
    inputs, heads = store.read_inputs(), store.read_heads()
    assert sorted(inputs.column("index").to_pylist()) == list(range(N_INPUTS))  # none lost, none twice
    head_keys = _key_rows(heads, ("index", "layer", "head"))
    assert len(head_keys) == len(set(head_keys)) == N_INPUTS * 3 * 4
    recorded = {index for record in store.commits() for index in record["inputs"]}
    assert recorded == set(range(N_INPUTS)) and done_before <= recorded
    # Every file on disk belongs to a committed part: nothing the killed process half-wrote survives.
    committed = {file for record in store.commits() for file in record["files"]}
    on_disk = {p.relative_to(out).as_posix() for folder in ("inputs", "heads") for p in (out / folder).rglob("*")
               if p.is_file()}
    assert on_disk == committed

    # The resumed numbers equal an uninterrupted sweep (same threads and batch size, so the same padded batches:
    # bit-identical).
    clean = run_sweep("tiny-gpt2", data, tmp_path / "clean", batch_size=2, max_new_tokens=1, threads=1)
    columns = [c for c in heads.column_names if c != "stack"]
    assert heads.select(columns).to_pylist() == clean.heads().select(columns).to_pylist()
    assert (inputs.drop_columns(["seconds"]).to_pylist() == clean.inputs().drop_columns(["seconds"]).to_pylist())
