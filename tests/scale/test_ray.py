"""The Ray executor on a real local cluster (2 CPUs): the local executor's numbers (to fp32 rounding where the batch
sizes differ), and resuming a local sweep that was interrupted with Ray."""

from __future__ import annotations

import pytest

from tests.helpers import close_rows
from workbench.scale import SweepStore, run_sweep

pytest.importorskip("ray")
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")  # Ray Data's own deprecated settings


class Interrupt(Exception):
    pass


def _comparable(table, drop=("seconds",)):
    return table.drop_columns([c for c in drop if c in table.column_names]).to_pylist()


def test_ray_equals_local_and_resumes_a_local_sweep(ray_cluster, inputs_file, tmp_path):
    data = inputs_file(10)
    options = dict(max_new_tokens=2, threads=1)
    local = run_sweep("tiny-llama", data, tmp_path / "local", executor="local", batch_size=3, **options)
    on_ray = run_sweep("tiny-llama", data, tmp_path / "ray", executor="ray", batch_size=2, workers=2,
                       cpus_per_worker=1, **options)
    assert on_ray.n_traced == 10 and on_ray.summary["last_run"]["executor"] == "ray"
    # Two replicas, each its own process: the rows (in any commit order) equal the local run's (other batch sizes,
    # so other padded batches: equal to fp32 rounding).
    assert close_rows(_comparable(on_ray.heads()), _comparable(local.heads()))
    assert close_rows(_comparable(on_ray.inputs()), _comparable(local.inputs()))
    assert {p.name for p in (tmp_path / "ray" / "aggregates").iterdir()} == {"heads.parquet", "layers.parquet"}
    import pyarrow.parquet as pq

    assert close_rows(pq.read_table(tmp_path / "ray" / "aggregates" / "heads.parquet").to_pylist(),
                      pq.read_table(tmp_path / "local" / "aggregates" / "heads.parquet").to_pylist())

    # A local sweep interrupted after two parts, finished on Ray: still one row per input, same numbers.
    out = tmp_path / "mixed"
    calls = []

    def stop(done, total, traced):
        if traced:
            calls.append(done)
            if len(calls) == 2:
                raise Interrupt()

    with pytest.raises(Interrupt):
        run_sweep("tiny-llama", data, out, executor="local", batch_size=3, progress=stop, **options)
    assert len(SweepStore(out).commits()) == 2
    finished = run_sweep("tiny-llama", data, out, executor="ray", batch_size=2, workers=1, **options)
    assert (finished.n_resumed, finished.n_traced) == (6, 4)
    assert close_rows(_comparable(finished.heads()), _comparable(local.heads()))
    assert sorted(finished.inputs().column("index").to_pylist()) == list(range(10))
