"""Sweeps against concurrency and tampering: one run per output folder, commit records that cannot reach outside
the folder, damaged parts traced again on resume, and --force that never deletes a user's files."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest

from workbench.errors import InputError, OutputExistsError
from workbench.scale import SweepStore, run_sweep
from workbench.scale.lock import LOCK_NAME, SweepLock

# Each process waits for the other at a file barrier, then runs the real CLI; whoever gets the lock keeps it,
# after its resume check and before tracing, until the other process has finished (at most two minutes), so
# the two runs certainly overlap however slowly the machine schedules them.
RACER = textwrap.dedent("""
    import os, sys, time
    barrier, me, other = sys.argv[1], sys.argv[2], sys.argv[3]
    from workbench.scale import store
    recover = store.SweepStore.recover
    def held_recover(self, notify=None):
        done = recover(self, notify)
        deadline = time.time() + 120
        while not os.path.exists(os.path.join(barrier, "done-" + other)) and time.time() < deadline:
            time.sleep(0.05)
        return done
    store.SweepStore.recover = held_recover
    from workbench.cli.main import main
    print(os.getpid(), flush=True)
    open(os.path.join(barrier, me), "w").close()
    while not os.path.exists(os.path.join(barrier, other)):
        time.sleep(0.01)
    sys.argv = ["workbench", *sys.argv[4:]]
    try:
        main()
    finally:
        open(os.path.join(barrier, "done-" + me), "w").close()
""")


def _rows(table):
    return sorted(table.drop_columns(["seconds"]).to_pylist(), key=lambda row: row["index"])


def test_two_sweeps_on_one_output_only_one_traces(inputs_file, tmp_path):
    data, out = inputs_file(3), tmp_path / "out"
    (tmp_path / "barrier").mkdir()
    args = ["sweep", "-m", "tiny-gpt2", "--data", data, "--out", out, "--batch-size", "1", "--threads", "1"]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    racers = [subprocess.Popen([sys.executable, "-c", RACER, str(tmp_path / "barrier"), me, other, *map(str, args)],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
              for me, other in (("a", "b"), ("b", "a"))]
    results = [(racer.wait(timeout=300), *racer.communicate()) for racer in racers]
    codes = sorted(code for code, _, _ in results)
    assert codes == [0, 2], results
    (_, winner_out, _), = [r for r in results if r[0] == 0]
    (_, _, loser_err), = [r for r in results if r[0] == 2]
    lines = [line for line in loser_err.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in loser_err, loser_err
    assert lines[0].startswith("error: ") and f"another sweep (pid {winner_out.split()[0]})" in lines[0]
    store = SweepStore(out)
    assert sorted(i for record in store.commits() for i in record["inputs"]) == [0, 1, 2]  # traced once each
    assert sorted(store.read_inputs().column("index").to_pylist()) == [0, 1, 2]


def test_lock_held_in_this_process_refuses_and_a_dead_holders_lock_is_taken(inputs_file, tmp_path):
    data, out = inputs_file(1), tmp_path / "out"
    out.mkdir()
    with SweepLock(out):
        with pytest.raises(OutputExistsError, match=f"another sweep \\(pid {os.getpid()}\\)"):
            run_sweep("tiny-gpt2", data, out)
    assert not (out / "sweep.json").exists()
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (out / LOCK_NAME).write_text(json.dumps({"pid": dead.pid, "host": os.uname().nodename}))
    result = run_sweep("tiny-gpt2", data, out, threads=1)
    assert result.n_traced == 1


def test_commit_record_naming_a_path_outside_the_sweep_is_refused(inputs_file, tmp_path):
    data, out = inputs_file(2), tmp_path / "sweeps" / "out"
    run_sweep("tiny-gpt2", data, out, batch_size=1, threads=1)
    store = SweepStore(out)
    record_path = sorted((out / "_commits").glob("part-*.json"))[0]
    record = json.loads(record_path.read_text())
    outside = tmp_path / "x.parquet"
    outside.write_bytes((out / record["files"][0]).read_bytes())
    for bad in ("inputs/../../../x.parquet", str(outside), "heads/stack=text/../../../../x.parquet"):
        record["files"] = [f"inputs/{record['part']}.parquet", bad]
        record_path.write_text(json.dumps(record))
        with pytest.raises(InputError, match="not one of this part's files in the sweep folder"):
            store.read_inputs()
        with pytest.raises(InputError, match=str(record_path.name)):
            run_sweep("tiny-gpt2", data, out, batch_size=1, threads=1)
    assert outside.exists()


@pytest.mark.parametrize("damage", ["truncate", "garbage"])
def test_damaged_part_is_named_and_only_it_is_traced_again(inputs_file, tmp_path, damage):
    data = inputs_file(4)
    clean = run_sweep("tiny-gpt2", data, tmp_path / "clean", batch_size=2, threads=1)
    out = tmp_path / "out"
    run_sweep("tiny-gpt2", data, out, batch_size=2, threads=1)
    record = SweepStore(out).commits()[1]
    target = out / (record["files"][0] if damage == "truncate" else record["files"][-1])
    content = target.read_bytes()
    target.write_bytes(content[: len(content) // 2] if damage == "truncate" else os.urandom(len(content)))
    notices = []
    resumed = run_sweep("tiny-gpt2", data, out, batch_size=2, threads=1, notify=notices.append)
    assert len(notices) == 1 and f"part {record['part']}" in notices[0] and target.name in notices[0], notices
    assert (resumed.n_resumed, resumed.n_traced) == (2, 2)
    assert _rows(resumed.inputs()) == _rows(clean.inputs())
    heads = lambda result: sorted(result.heads().drop_columns([]).to_pylist(),
                                  key=lambda r: (r["index"], r["layer"], r["head"]))
    assert heads(resumed) == heads(clean)


def test_damaged_part_through_the_cli_is_one_warning_line(inputs_file, tmp_path):
    data, out = inputs_file(2), tmp_path / "out"
    run_sweep("tiny-gpt2", data, out, batch_size=1, threads=1)
    part = SweepStore(out).commits()[0]
    (out / part["files"][0]).write_bytes(b"PAR1 not really parquet")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "COLUMNS": "300"}
    result = subprocess.run([sys.executable, "-m", "workbench.cli.main", "sweep", "-m", "tiny-gpt2", "--data", data,
                             "--out", out, "--batch-size", "1", "--threads", "1"], capture_output=True, text=True,
                            env=env, timeout=300)
    assert result.returncode == 0 and "Traceback" not in result.stderr, result.stderr
    warnings = [line for line in result.stderr.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 1 and f"part {part['part']}" in warnings[0], result.stderr
    assert "2 inputs (1 traced now, 1 resumed" in result.stderr


def _snapshot(root):
    return {path.relative_to(root).as_posix(): path.read_bytes() for path in root.rglob("*") if path.is_file()}


def test_force_replaces_only_the_sweep_never_the_users_files(inputs_file, tmp_path):
    data, out = inputs_file(2), tmp_path / "out"
    run_sweep("tiny-gpt2", data, out, batch_size=1, bundles=1, threads=1)
    mine = {"notes.txt": b"mine", "inputs/my-table.parquet": b"also mine", "bundles/mine/readme.md": b"keep",
            "heads/stack=text/part-notes.txt": b"keep too"}
    for name, content in mine.items():
        (out / name).parent.mkdir(parents=True, exist_ok=True)
        (out / name).write_bytes(content)
    resumed = run_sweep("tiny-gpt2", data, out, batch_size=1, threads=1)  # a resume deletes nothing of the user's
    assert resumed.n_traced == 0 and all((out / name).read_bytes() == content for name, content in mine.items())
    forced = run_sweep("tiny-gpt2", data, out, batch_size=1, max_new_tokens=1, force=True, threads=1)
    assert forced.n_traced == 2
    assert all((out / name).read_bytes() == content for name, content in mine.items())
    assert not list((out / "bundles").glob("*.wbtrace"))  # the old sweep's bundle went with it


@pytest.mark.parametrize("setup", ["user files", "user sweep.json", "regular file"])
def test_force_refuses_what_is_not_a_sweep(inputs_file, tmp_path, setup):
    data, out = inputs_file(1), tmp_path / "out"
    if setup == "regular file":
        out.write_text("a file")
    else:
        out.mkdir()
        (out / ("sweep.json" if setup == "user sweep.json" else "data.csv")).write_text('{"mine": 1}')
    before = _snapshot(tmp_path)
    with pytest.raises(OutputExistsError) as raised:
        run_sweep("tiny-gpt2", data, out, force=True)
    assert "choose another --out" in str(raised.value)
    assert _snapshot(tmp_path) == before
    assert not (out / LOCK_NAME).exists() if out.is_dir() else True
