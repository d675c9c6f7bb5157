"""The local executor: tables equal direct traces, aggregates equal a pandas group-by, resume and user errors."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest

import workbench
from tests.helpers import close_rows
from workbench.errors import OutputExistsError
from workbench.scale import SweepStore, read_inputs, run_sweep
from workbench.scale.features import head_rows

WORKBENCH = [sys.executable, "-m", "workbench.cli.main"]


class Interrupt(Exception):
    pass


def _stop_after(parts: int):
    seen = []

    def progress(done, total, traced):
        if traced:
            seen.append(done)
            if len(seen) >= parts:
                raise Interrupt()

    return progress


def _rows(table, drop=("seconds",)):
    data = table.drop_columns([c for c in drop if c in table.column_names]).to_pylist()
    return sorted(data, key=lambda r: tuple(str(r.get(k)) for k in ("stack", "index", "layer", "head")))


def test_tables_equal_direct_traces_and_bundles(models, inputs_file, tmp_path):
    data = inputs_file(6)
    result = run_sweep("tiny-llama", data, tmp_path / "out", batch_size=4, max_new_tokens=2, bundles=2)
    assert (result.n_inputs, result.n_traced, result.n_resumed, result.n_errors) == (6, 6, 0, 0)
    inputs = result.inputs()
    assert inputs.column("index").to_pylist() == list(range(6))
    heads = result.heads()
    assert heads.num_rows == 6 * 3 * 6
    loaded = models("tiny-llama")
    for item in read_inputs(data).items:
        trace = workbench.trace(loaded, item.prompt, max_new_tokens=2)
        direct = sorted(head_rows(trace), key=lambda r: (r["layer"], r["head"]))
        swept = [r for r in heads.to_pylist() if r["index"] == item.index]
        swept = sorted(swept, key=lambda r: (r["layer"], r["head"]))
        assert close_rows([{k: r[k] for k in direct[0]} for r in swept], direct)
    bundles = [b for b in inputs.column("bundle").to_pylist() if b]
    assert bundles == ["bundles/000000.wbtrace", "bundles/000003.wbtrace"]
    loaded_bundle = workbench.load(result.out / bundles[1])
    assert loaded_bundle.generation["text"] == inputs.column("generated_text").to_pylist()[3]


def test_aggregates_equal_pandas_groupby(inputs_file, tmp_path):
    result = run_sweep("tiny-gpt2", inputs_file(5), tmp_path / "out", batch_size=2, max_new_tokens=1)
    heads = result.heads().to_pandas()
    aggregates = pq.read_table(result.out / "aggregates" / "heads.parquet").to_pandas()
    grouped = heads.groupby(["stack", "layer", "head"], observed=True)
    expected = grouped.agg(n_inputs=("index", "nunique"), sink_score_mean=("sink_score", "mean"),
                           entropy_mean=("entropy_mean", "mean"), share_prompt_mean=("share_prompt", "mean"),
                           lookback_ratio_mean=("lookback_ratio", "mean")).reset_index()
    expected["sink_rate"] = grouped["sink"].mean().values * 100
    assert len(aggregates) == len(expected) == 3 * 4
    for column in ("n_inputs", "sink_score_mean", "entropy_mean", "share_prompt_mean", "lookback_ratio_mean",
                   "sink_rate"):
        assert aggregates[column].astype(float).values == pytest.approx(expected[column].astype(float).values,
                                                                        rel=1e-12, abs=1e-12), column
    layers = pq.read_table(result.out / "aggregates" / "layers.parquet").to_pandas()
    assert list(layers["layer"]) == [0, 1, 2]
    summary = json.loads((result.out / "summary.json").read_text())
    assert summary["inputs"] == 5 and summary["head_rows"] == 5 * 12 and summary["errors"] == 0


def test_resume_after_interruption_skips_done_and_drops_orphans(inputs_file, tmp_path):
    data = inputs_file(7)
    clean = run_sweep("tiny-gpt2", data, tmp_path / "clean", batch_size=2, threads=1)
    out = tmp_path / "out"
    with pytest.raises(Interrupt):
        run_sweep("tiny-gpt2", data, out, batch_size=2, threads=1, progress=_stop_after(2))
    store = SweepStore(out)
    assert len(store.commits()) == 2
    # A crash between a part's renames and its commit record leaves files no record names: fake one,
    # plus a staging temporary, and check the resume deletes both instead of counting their rows.
    part = store.commits()[0]["files"]
    for file in part:
        source = out / file
        shutil.copy(source, source.with_name("part-99999999-orphan.parquet"))
    (out / "heads" / "stack=text" / ".part-x.parquet.tmp").write_bytes(b"partial")
    resumed = run_sweep("tiny-gpt2", data, out, batch_size=3, threads=1)
    assert (resumed.n_resumed, resumed.n_traced) == (4, 3)
    assert not list(out.rglob("*orphan*")) and not list(out.rglob(".*.tmp"))
    assert close_rows(_rows(resumed.inputs()), _rows(clean.inputs()))  # batches of 3 after 2: fp32 rounding
    assert close_rows(_rows(resumed.heads()), _rows(clean.heads()))
    again = run_sweep("tiny-gpt2", data, out, batch_size=3, threads=1)  # nothing left: only re-aggregates
    assert (again.n_resumed, again.n_traced) == (7, 0)


def test_refuses_a_different_sweep_unless_forced(inputs_file, tmp_path):
    data = inputs_file(2)
    run_sweep("tiny-gpt2", data, tmp_path / "out", batch_size=2)
    with pytest.raises(OutputExistsError, match="different max_new_tokens"):
        run_sweep("tiny-gpt2", data, tmp_path / "out", max_new_tokens=3)
    with pytest.raises(OutputExistsError, match="different model"):
        run_sweep("tiny-llama", data, tmp_path / "out")
    forced = run_sweep("tiny-gpt2", data, tmp_path / "out", max_new_tokens=1, force=True)
    assert forced.n_traced == 2
    (tmp_path / "stuff").mkdir()
    (tmp_path / "stuff" / "notes.txt").write_text("mine")
    with pytest.raises(OutputExistsError, match="holds no sweep"):
        run_sweep("tiny-gpt2", data, tmp_path / "stuff")


def test_input_errors_are_recorded_and_the_sweep_goes_on(tmp_path):
    data = tmp_path / "in.jsonl"
    data.write_text(json.dumps({"prompt": "short"}) + "\n" + json.dumps({"prompt": "long " * 80}) + "\n")
    result = run_sweep("tiny-gpt2", data, tmp_path / "out")  # tiny-gpt2 has 256 positions
    assert result.n_errors == 1
    inputs = result.inputs().to_pylist()
    assert inputs[0]["error"] is None and "longer than tiny-gpt2's context" in inputs[1]["error"]
    assert set(result.heads().column("index").to_pylist()) == {0}


def _cli(*args, env=None, timeout=300):
    environment = {**os.environ, "HF_HUB_OFFLINE": "1", "COLUMNS": "200", "OMP_NUM_THREADS": "1", **(env or {})}
    return subprocess.run([*WORKBENCH, *map(str, args)], capture_output=True, text=True, env=environment,
                          timeout=timeout)


def _assert_user_error(result, fragment):
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
    assert len(lines) == 1 and lines[0].startswith("error: ") and fragment in lines[0], result.stderr


def test_cli_sweep_and_resume_message(inputs_file, tmp_path):
    data, out = inputs_file(3), tmp_path / "out"
    first = _cli("sweep", "-m", "tiny-gpt2", "--data", data, "--out", out, "--batch-size", "2")
    assert first.returncode == 0, first.stderr
    assert "3 inputs (3 traced now, 0 resumed" in first.stderr
    assert pq.read_table(out / "aggregates" / "heads.parquet").num_rows == 12
    second = _cli("sweep", "-m", "tiny-gpt2", "--data", data, "--out", out)
    assert second.returncode == 0 and "resuming: 3 of 3 inputs already done" in second.stderr


@pytest.mark.parametrize("args,env,fragment", [
    (["--executor", "spark"], {}, "unknown executor 'spark'"),
    (["--backend", "jax"], {}, "unknown backend 'jax'"),
    (["--backend", "nnsight", "--remote"], {"NDIF_API_KEY": ""}, "needs an API key"),
    (["--backend", "nnsight", "--remote"], {"NDIF_API_KEY": "k", "NDIF_HOST": "http://127.0.0.1:9"},
     "cannot reach NDIF"),
    (["--remote"], {}, "needs --backend nnsight"),
    (["--ray-address", "127.0.0.1:9"], {}, "needs --executor ray"),
    (["--executor", "ray", "--ray-address", "127.0.0.1:9"], {}, "cannot reach the Ray cluster"),
    (["--batch-size", "0"], {}, "--batch-size must be between 1"),
    (["--cpus-per-worker", "nan"], {}, "--cpus-per-worker must be a finite number"),
    (["--gpus-per-worker", "-1"], {}, "--gpus-per-worker must be between 0 and 1024"),
    (["--threads", "0"], {}, "--threads must be between 1"),
    (["-n", "-5"], {}, "--max-new-tokens must be between 0"),
    (["--bundles", "9" * 40], {}, "--bundles must be between 0 and 10,000,000, not a 40-digit number"),
    (["--workers", "-1"], {}, "--workers must be between 0"),
    (["--dtype", "float8"], {}, "unknown --dtype 'float8'"),
    (["--device", "bogus"], {}, "unknown --device 'bogus'"),
])
def test_cli_user_errors_are_one_line(inputs_file, tmp_path, args, env, fragment):
    result = _cli("sweep", "-m", "tiny-gpt2", "--data", inputs_file(1), "--out", tmp_path / "o", *args, env=env,
                  timeout=60)
    _assert_user_error(result, fragment)
    assert not (tmp_path / "o").exists() or "ray" in " ".join(args)


def test_cli_missing_data_and_mismatch(tmp_path, inputs_file):
    _assert_user_error(_cli("sweep", "-m", "tiny-gpt2", "--data", tmp_path / "no.jsonl", "--out", tmp_path / "o"),
                       "does not exist")
    data = inputs_file(1)
    run_sweep("tiny-gpt2", data, tmp_path / "o")
    _assert_user_error(_cli("sweep", "-m", "tiny-gpt2", "--data", data, "--out", tmp_path / "o", "-n", "2"),
                       "holds a sweep with different max_new_tokens")
    assert Path(tmp_path / "o" / "sweep.json").exists()


@pytest.mark.filterwarnings("ignore::FutureWarning", "ignore::UserWarning")
@pytest.mark.parametrize("backend", ["nnsight", "lens"])
def test_frontend_backends_give_the_same_features(inputs_file, tmp_path, backend):
    data = inputs_file(3)
    reference = run_sweep("tiny-llama", data, tmp_path / "hf", max_new_tokens=2).heads().to_pandas()
    other = run_sweep("tiny-llama", data, tmp_path / backend, backend=backend, max_new_tokens=2).heads().to_pandas()
    assert other[["index", "layer", "head"]].equals(reference[["index", "layer", "head"]])
    floats = [c for c in reference.columns if reference[c].dtype == "float64"]
    assert other[floats].values == pytest.approx(reference[floats].values, abs=1e-5, rel=1e-5, nan_ok=True)
    assert other["top_key"].equals(reference["top_key"])


def test_vision_language_sweep_with_images_folder(tmp_path):
    from PIL import Image

    images = tmp_path / "pictures"
    images.mkdir()
    Image.new("RGB", (40, 40), (220, 30, 30)).save(images / "red.png")
    data = tmp_path / "in.jsonl"
    data.write_text(json.dumps({"prompt": "What colour is this?", "image": "red.png", "id": "red"}) + "\n"
                    + json.dumps({"prompt": "Describe the picture.", "image": "red.png", "id": "red-2"}) + "\n")
    result = run_sweep("tiny-llava", data, tmp_path / "out", images=images, max_new_tokens=1)
    heads = result.heads().to_pandas()
    assert set(heads["stack"]) == {"text", "vision"}
    assert (result.out / "heads" / "stack=vision").is_dir()
    text = heads[heads["stack"] == "text"]
    assert len(text) == 2 * 3 * 6 and len(heads[heads["stack"] == "vision"]) == 2 * 2 * 4
    assert (text["share_image"] > 0).all()  # 16 image tokens in every text-stack row's view
    assert result.inputs().column("tokens_image").to_pylist() == [16, 16]
    aggregates = pq.read_table(result.out / "aggregates" / "heads.parquet").to_pandas()
    assert set(aggregates["stack"]) == {"text", "vision"}
