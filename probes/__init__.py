"""Hallucination detectors trained on traces (import name `workbench.probes`; docs/probes.md).

    >>> import tempfile
    >>> from workbench import probes
    >>> from workbench.probes import tasks
    >>> items = tasks.sample([i for i in tasks.scene_items("data/scenes") if i.task == "scenes/presence"], 300)
    >>> path = f"{tempfile.mkdtemp()}/scenes.parquet"     # `workbench probe build` writes the same table
    >>> meta = probes.build_dataset("llava-scenes", items, path, max_new_tokens=3, embed=False)
    >>> data = probes.load_dataset(path)
    >>> probe, report = probes.train(data, "lookback", features="span")
    >>> sorted(report), 0.0 <= probes.roc_curve(probe, data)["auroc"] <= 1.0
    (['test', 'train'], True)
    >>> saved = probe.save(f"{tempfile.mkdtemp()}/lookback.probe")
    >>> probes.load_probe(saved).detector
    'lookback'

Modules: tasks (inputs with labels known by construction), features (lookback ratios and friends from a
trace's statistics), graphs (attention graph of one generation), dataset (Parquet build / load / split by
group), lookback (Lookback Lens), nonkes (graph of generations, GATv2), attention_graph (GATv2 per
generation), gnn (what the graph detectors share), evaluate (AUROC, grouped folds), lookback_training
(train and measure a Lookback Lens on a dataset's splits), store (safetensors + JSON, no pickle), probe (`Probe`).
Heavy imports (torch_geometric, sklearn, pyarrow) happen on first use.
"""

from __future__ import annotations

from workbench.lazy import lazy_getattr

_LAZY = {
    "Probe": ("workbench.probes.probe", "Probe"),
    "train": ("workbench.probes.probe", "train"),
    "load_probe": ("workbench.probes.probe", "load_probe"),
    "load_dataset": ("workbench.probes.dataset", "load"),
    "build_dataset": ("workbench.probes.dataset", "build"),
    "token_features": ("workbench.probes.features", "token_features"),
    "attention_graph": ("workbench.probes.graphs", "attention_graph"),
    "roc_curve": ("workbench.probes.roc", "roc_curve"),
}

__all__ = list(_LAZY)


__getattr__ = lazy_getattr(__name__, _LAZY, globals())
