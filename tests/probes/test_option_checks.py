"""Every option of `workbench probe build|train` (and the app's --cache-mb) is checked before any dataset,
prompt file or model is read: a bad number or name is one `error:` line and exit 2. The loaders are replaced by
tripwires here, so a check that ran after loading would fail the test instead of passing by accident."""

from __future__ import annotations

import pytest

from tests.workbench.cli.cli_inprocess import run_cli

BUILD = ["probe", "build", "-m", "tiny-llama", "-o", "x.parquet"]
TRAIN = ["probe", "train", "-d", "data.parquet", "-o", "new.probe"]
NONKES = [*TRAIN, "--detector", "nonkes"]

CASES = [
    ([*BUILD, "--top-k", "0"], "--top-k must be between 1"),
    ([*BUILD, "--edges-per-node", "-1"], "--edges-per-node must be between 1"),
    ([*BUILD, "--limit", "0"], "--limit must be between 1"),
    ([*BUILD, "--n", "0"], "--n must be between 1"),
    ([*BUILD, "--n", "9" * 40], "--n must be between 1 and 1,000,000, not a 40-digit number"),
    ([*BUILD, "--seed", "-1"], "--seed must be between 0"),
    ([*BUILD, "-n", "0"], "--max-new-tokens must be between 1"),
    ([*BUILD, "--threads", "0"], "--threads must be between 1"),
    ([*BUILD, "--task", "bogus"], "unknown --task 'bogus'"),
    ([*TRAIN, "--C", "-1"], "--C must be a finite number above 0"),
    ([*TRAIN, "--C", "nan"], "--C must be a finite number above 0"),
    ([*TRAIN, "--C", "inf"], "--C must be a finite number above 0"),
    ([*TRAIN, "--C", "0"], "--C must be a finite number above 0"),
    ([*TRAIN, "--C", "lots"], "--C takes a positive number or auto"),
    ([*TRAIN, "--window", "0"], "--window must be between 1"),
    ([*TRAIN, "--features", "bogus"], "unknown --features 'bogus'"),
    ([*TRAIN, "--span", "bogus"], "unknown --span 'bogus'"),
    ([*TRAIN, "--test-fraction", "nan"], "--test-fraction must be a finite number"),
    ([*TRAIN, "--test-fraction", "0"], "--test-fraction must be above 0"),
    ([*TRAIN, "--test-fraction", "1"], "--test-fraction must be below 1"),
    ([*TRAIN, "--seed", str(2**40)], "--seed must be between 0"),
    ([*TRAIN, "--detector", "bogus"], "unknown --detector 'bogus'"),
    ([*TRAIN, "--epochs", "-5"], "--epochs must be between 1"),
    ([*NONKES, "--epochs", "0"], "--epochs must be between 1"),
    ([*NONKES, "--k", "0"], "--k must be between 1"),
    ([*NONKES, "--threshold", "nan"], "--threshold must be a finite number"),
    ([*NONKES, "--threshold", "1.5"], "--threshold must be between -1 and 1"),
    ([*NONKES, "--hidden-layer", "-1"], "--hidden-layer must be between 0"),
    ([*NONKES, "--edges", "bogus"], "unknown --edges 'bogus'"),
    ([*NONKES, "--embedding", "bogus"], "unknown --embedding 'bogus'"),
    (["app", "--traces", ".", "--cache-mb", "-5"], "--cache-mb must be between 1"),
]


@pytest.fixture
def tripwires(monkeypatch, tmp_path):
    """Make loading a model, a dataset or a prompt file fail loudly; run in an empty folder."""
    import workbench.models
    from workbench.probes import dataset, tasks

    def tripped(*args, **kwargs):
        raise AssertionError("loaded before the options were checked")

    for module, name in ((workbench.models, "load_model"), (dataset, "load"), (tasks, "kv_items"),
                         (tasks, "facts_items"), (tasks, "scene_items")):
        monkeypatch.setattr(module, name, tripped)
    monkeypatch.chdir(tmp_path)
    (tmp_path / "data.parquet").write_bytes(b"PAR1")
    return tmp_path


@pytest.mark.parametrize("args,fragment", CASES, ids=[" ".join(args[2:]) if args[0] == "probe" else "app"
                                                       for args, _ in CASES])
def test_bad_option_is_one_line_before_anything_loads(tripwires, args, fragment):
    code, out, err = run_cli(*args)
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2 and "Traceback" not in err and "AssertionError" not in err, err
    assert len(lines) == 1 and lines[0].startswith("error: ") and fragment in lines[0], err
    assert sorted(path.name for path in tripwires.iterdir()) == ["data.parquet"]  # nothing written
