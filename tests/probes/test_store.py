"""Probes survive a save/load round trip as safetensors + JSON (no pickle) and score exactly as before."""

from __future__ import annotations

import json
import struct

import numpy as np
import pytest
from workbench.probes.dataset import split
from workbench.probes.lookback import examples

from tests.probes.labels import with_labels
from workbench import probes
from workbench.errors import WorkbenchError


def random_labels(data):
    return np.random.RandomState(7).randint(0, 2, len(data))


def safetensors_header(path) -> dict:
    """Parse the file as safetensors by hand: 8-byte length, JSON header, raw tensor bytes, nothing else."""
    raw = path.read_bytes()
    (length,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8:8 + length])
    end = max(info["data_offsets"][1] for name, info in header.items() if name != "__metadata__")
    assert 8 + length + end == len(raw)
    return header


def test_lookback_round_trip_equals_sklearn(kv_dataset, tmp_path):
    data = with_labels(kv_dataset, random_labels(kv_dataset))
    probe, _ = probes.train(data, "lookback", features="window", C=0.5)
    ex = examples(data, features="window")
    expected = probe.lookback().pipeline().predict_proba(ex.X)[:, 1]
    path = probe.save(tmp_path / "lookback.probe")
    header = safetensors_header(path)
    assert json.loads(header["__metadata__"]["probe"])["detector"] == "lookback"
    assert not path.read_bytes().startswith(b"\x80")  # not a pickle stream
    loaded = probes.load_probe(path)
    np.testing.assert_allclose(loaded.lookback().score(ex.X), expected, rtol=1e-12)
    assert loaded.config["C"] == 0.5 and loaded.config["features"] == "window"
    assert loaded.evaluate(data)["auroc"] == pytest.approx(probe.evaluate(data)["auroc"])


def test_sklearn_fit_matches_numpy_scoring(kv_dataset):
    """The numpy scorer equals the fitted sklearn pipeline it was exported from."""
    from workbench.probes.lookback import fit

    data = with_labels(kv_dataset, random_labels(kv_dataset))
    ex = examples(data, features="span")
    model, _, _ = fit(ex.X, ex.y, data.groups[ex.row], C=1.0)
    from workbench.probes.lookback import LookbackProbe

    probe = LookbackProbe.from_pipeline(model, {"features": "span"})
    np.testing.assert_allclose(probe.score(ex.X), model.predict_proba(ex.X)[:, 1], rtol=1e-10)


@pytest.mark.parametrize("detector,options", [
    ("nonkes", {"epochs": 5, "pretrain_epochs": 2}),
    ("attention-graph", {"epochs": 1}),
])
def test_graph_probes_round_trip(kv_dataset, tmp_path, detector, options):
    data = with_labels(kv_dataset, random_labels(kv_dataset))
    probe, report = probes.train(data, detector, **options)
    path = probe.save(tmp_path / f"{detector}.probe")
    safetensors_header(path)
    loaded = probes.load_probe(path)
    test = np.nonzero(split(data.groups, seed=0, test_fraction=0.2))[0]
    np.testing.assert_allclose(loaded.score_rows(data, test), probe.score_rows(data, test), rtol=1e-5, atol=1e-6)
    assert loaded.evaluate(data)["auroc"] == pytest.approx(report["test"]["auroc"], abs=1e-6)


def test_damaged_or_foreign_files_fail_in_one_line(tmp_path):
    from safetensors.numpy import save_file

    garbage = tmp_path / "garbage.probe"
    garbage.write_bytes(b"not a probe at all")
    foreign = tmp_path / "foreign.probe"
    save_file({"w": np.zeros(3, np.float32)}, str(foreign))
    for path, fragment in ((garbage, "is not a probe file"), (foreign, "not a workbench probe"),
                           (tmp_path / "missing.probe", "does not exist")):
        with pytest.raises(WorkbenchError, match=fragment) as error:
            probes.load_probe(path)
        assert "\n" not in str(error.value)


def test_force_replaces_only_a_probe_the_workbench_wrote(kv_dataset, tmp_path):
    """--force / force=True replaces an earlier probe, never a user's file of the same name."""
    from workbench.errors import OutputExistsError

    probe, _ = probes.train(kv_dataset, "lookback", features="span", seed=0)
    mine = tmp_path / "notes.probe"
    mine.write_text("my own notes, not a probe")
    with pytest.raises(OutputExistsError, match="not a probe file"):
        probe.save(mine, force=True)
    assert mine.read_text() == "my own notes, not a probe"
    ours = probe.save(tmp_path / "ok.probe")
    probe.save(ours, force=True)  # an earlier probe is replaced
    assert probes.Probe.load(ours).detector == "lookback"


def test_force_replaces_only_a_dataset_table_the_workbench_wrote(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    from workbench.errors import OutputExistsError
    from workbench.probes.dataset import check_output

    foreign = tmp_path / "results.parquet"
    pq.write_table(pa.table({"x": [1, 2]}), foreign)
    with pytest.raises(OutputExistsError, match="not a probe dataset table"):
        check_output(foreign, force=True)
    with pytest.raises(OutputExistsError, match="already exists"):
        check_output(foreign, force=False)
