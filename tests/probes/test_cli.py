"""`workbench probe build|train|eval` and `workbench trace --probe` end to end, in subprocesses."""

from __future__ import annotations

import json

import numpy as np
import pytest

from tests.probes.conftest import short_kv_items
from tests.probes.labels import with_labels
from tests.workbench.cli.test_cli import assert_user_error, run


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    """A dataset built by the CLI, relabelled at random (the tiny fixture never states numbers) and a probe."""
    import pyarrow.parquet as pq
    from workbench.probes import dataset

    root = tmp_path_factory.mktemp("probe-cli")
    prompts = root / "kv.jsonl"
    prompts.write_text("".join(json.dumps({"name": item.id, "prompt": item.prompt, **item.truth}) + "\n"
                               for item in short_kv_items(40, seed=1)))
    built = run("probe", "build", "--model", "tiny-llama", "--prompts", prompts, "--out", root / "built.parquet",
                "--max-new-tokens", "4", "--no-embed", "--threads", "1")
    assert built.returncode == 0, built.stderr
    assert "40 generations by tiny-llama" in built.stderr and "inputs/s" in built.stderr
    data = dataset.load(root / "built.parquet")
    assert data.meta["command"].startswith("workbench probe build")
    relabelled = with_labels(data, np.random.RandomState(0).randint(0, 2, len(data)))
    pq.write_table(relabelled.table, root / "kv.parquet")
    trained = run("probe", "train", "--data", root / "kv.parquet", "--out", root / "lookback.probe",
                  "--features", "window", "--window", "4", "--test-fraction", "0.4", "--json", root / "train.json")
    assert trained.returncode == 0, trained.stderr
    return root


def test_train_and_eval_report_the_same_held_out_auroc(workspace):
    report = json.loads((workspace / "train.json").read_text())["report"]
    assert report["test"]["n"] > 0 and set(report["test"]["baselines"]) >= {"logprob", "entropy", "lookback_mean"}
    evaluated = run("probe", "eval", "--probe", workspace / "lookback.probe", "--data", workspace / "kv.parquet",
                    "--json", "-")
    assert evaluated.returncode == 0, evaluated.stderr
    result = json.loads(evaluated.stdout)["results"][str(workspace / "lookback.probe")]
    assert result["rows"] == "held-out split"
    assert result["auroc"] == pytest.approx(report["test"]["auroc"])


def test_trace_with_probe_writes_token_scores(workspace):
    from workbench.probes import load_probe

    import workbench

    bundle = workspace / "scored.wbtrace"
    result = run("trace", "--model", "tiny-llama", "--prompt", "Anna 42. Ben 17. Ben?", "--max-new-tokens", "5",
                 "--probe", workspace / "lookback.probe", "--out", bundle)
    assert result.returncode == 0, result.stderr
    stored = json.loads((bundle / "results" / "lookback.json").read_text())
    trace = workbench.load(bundle)
    start, end = trace.generation["start"], trace.generation["end"]
    assert [item["pos"] for item in stored["token_scores"]] == list(range(start, end))
    assert all(0.0 <= item["score"] <= 1.0 for item in stored["token_scores"])
    again = load_probe(workspace / "lookback.probe").score_trace(trace)
    np.testing.assert_allclose([i["score"] for i in stored["token_scores"]],
                               [i["score"] for i in again["token_scores"]], atol=1e-6)
    assert stored["probe"]["features"] == "window" and stored["generation_score"] == max(
        item["score"] for item in stored["token_scores"])


def test_user_errors_are_one_line(workspace, tmp_path):
    assert_user_error(run("probe", "train", "--data", tmp_path / "missing.parquet", "--out", tmp_path / "x.probe"),
                      "does not exist")
    assert_user_error(run("probe", "build", "--model", "tiny-llama", "--task", "nope", "--out",
                          tmp_path / "x.parquet"), "unknown --task")
    assert_user_error(run("trace", "--model", "tiny-gpt2", "--prompt", "hi", "--max-new-tokens", "2", "--probe",
                          workspace / "lookback.probe", "--out", tmp_path / "g.wbtrace"), "same layer and head counts")
