"""Hallucination detectors trained on traces (import name `workbench.probes`; docs/probes.md).

    from workbench import probes
    data = probes.load_dataset("kv.parquet")              # built by `workbench probe build`
    probe, report = probes.train(data, "lookback", features="window")
    probe.save("lookback.probe")

Modules: tasks (inputs with labels known by construction), features (lookback ratios and friends from a
trace's statistics), graphs (attention graph of one generation), dataset (Parquet build / load / split by
group), lookback (Lookback Lens), nonkes (graph of generations, GATv2), attention_graph (GATv2 per
generation), evaluate (AUROC, grouped folds), store (safetensors + JSON, no pickle), probe (`Probe`).
Heavy imports (torch_geometric, sklearn, pyarrow) happen on first use.
"""

from __future__ import annotations

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


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        module, attribute = _LAZY[name]
        value = getattr(importlib.import_module(module), attribute)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'workbench.probes' has no attribute {name!r}")
