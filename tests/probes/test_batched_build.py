"""`probe build --batch-size`: a dataset traced in padded batches equals the one traced one input at a time."""

from __future__ import annotations

import numpy as np
import pyarrow.parquet as pq
from workbench.probes import dataset

from tests.probes.conftest import short_kv_items


def test_batched_build_equals_one_at_a_time(models, tmp_path):
    items = short_kv_items(5, seed=3)
    tables = {}
    for size in (1, 3):
        dataset.build(models("tiny-llama"), items, tmp_path / f"b{size}.parquet", max_new_tokens=4, embed=False,
                      batch_size=size)
        tables[size] = pq.read_table(tmp_path / f"b{size}.parquet").to_pylist()
    assert len(tables[1]) == len(tables[3]) == 5
    for alone, batched in zip(tables[1], tables[3], strict=True):
        assert alone.keys() == batched.keys()
        for column, value in alone.items():
            if column == "seconds":
                continue
            numeric = isinstance(value, float) or (isinstance(value, list) and value
                                                   and all(isinstance(v, (int, float)) for v in np.ravel(value)))
            if numeric:
                np.testing.assert_allclose(np.asarray(batched[column], float), np.asarray(value, float), rtol=1e-5,
                                           atol=1e-5, err_msg=column)
            else:
                assert batched[column] == value, column
