"""Property test through the real CLI: whatever JSONL file a user hands `workbench sweep`, it ends in exit 0
(every line traced once) or exit 2 with one `error: FILE:LINE: ...` line and no output folder (nothing was
traced); never a traceback, and nothing outside the declared output changes."""

from __future__ import annotations

import hashlib
import itertools

from hypothesis import HealthCheck, given, settings

from tests.workbench.cli.cli_inprocess import run_cli
from tests.workbench.datasets.test_jsonl import files

_runs = itertools.count()


def _snapshot(root):
    return {path.relative_to(root).as_posix(): hashlib.sha256(path.read_bytes()).hexdigest()
            for path in sorted(root.rglob("*")) if path.is_file()}


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(lines=files())
def test_sweep_on_any_input_file_traces_all_or_refuses_in_one_line(tmp_path, lines):
    folder = tmp_path / f"run{next(_runs)}"
    folder.mkdir()
    (folder / "notes.txt").write_text("the user's own file")
    data = folder / "in.jsonl"
    data.write_bytes(b"\n".join(lines) + b"\n")
    before = _snapshot(folder)
    code, _, err = run_cli("sweep", "-m", "tiny-gpt2", "--data", data, "--out", folder / "out", "--threads", "1")
    assert code in (0, 2) and "Traceback" not in err and "internal error" not in err, err
    assert {name: digest for name, digest in _snapshot(folder).items() if not name.startswith("out/")} == before
    if code == 2:
        shown = [line for line in err.splitlines() if line.strip()]
        assert len(shown) == 1 and shown[0].startswith(f"error: {data}"), err
        assert not (folder / "out").exists()  # refused before anything was created or traced
    else:
        from workbench.scale import SweepStore

        written = SweepStore(folder / "out").read_inputs()
        assert written.num_rows == sum(1 for line in lines if line.decode("utf-8").strip())
        assert sorted(written.column("index").to_pylist()) == list(range(written.num_rows))
