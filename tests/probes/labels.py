"""Relabelling probe datasets in tests (random, shuffled or planted labels)."""

from __future__ import annotations

import numpy as np


def with_labels(data, labels: np.ndarray):
    """The dataset with new generation labels; every generated token carries its generation's label."""
    import pyarrow as pa
    from workbench.probes.dataset import ProbeDataset

    labels = np.asarray(labels, np.int8)
    table = data.table.set_column(data.table.column_names.index("label"), "label", pa.array(labels))
    tokens = [[int(label)] * int(n) for label, n in zip(labels, data.column("n_generated"))]
    table = table.set_column(table.column_names.index("token_labels"), "token_labels",
                             pa.array(tokens, type=pa.large_list(pa.int8())))
    return ProbeDataset(data.path, data.meta, table)


def with_token_labels(data, token_labels: list[np.ndarray]):
    """The dataset with new per-token labels; a generation is hallucinated when any of its tokens is."""
    import pyarrow as pa
    from workbench.probes.dataset import ProbeDataset

    labels = np.array([int(t.max()) if len(t) else 0 for t in token_labels], np.int8)
    table = data.table.set_column(data.table.column_names.index("label"), "label", pa.array(labels))
    table = table.set_column(table.column_names.index("token_labels"), "token_labels",
                             pa.array([t.astype(int).tolist() for t in token_labels], type=pa.large_list(pa.int8())))
    return ProbeDataset(data.path, data.meta, table)
