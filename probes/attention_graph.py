"""Attention-graph detector (beyond Nonkes et al.): one graph per generation, classified with GATv2 + pooling.

Graphs come from `workbench.probes.graphs` (tokens as nodes with statistics features, top-k attention as
weighted key -> query edges). Model: Linear(F, 64) + ReLU, two GATv2Conv(64, 64, heads=2, averaged,
edge_dim=1) layers with ELU, then [mean over all nodes, max over all nodes, mean over generated nodes] ->
MLP -> one logit. Node features are standardised with training statistics. Trained with BCE (positive class
re-weighted), Adam, mini-batches of graphs; the epoch is chosen on a validation subset of the training groups.
"""

from __future__ import annotations

import numpy as np
from workbench.probes.gnn import (
    BestEpoch,
    load_state,
    pos_weight,
    require_torch_geometric,
    standardiser,
    state_to_numpy,
    training_split,
)

from workbench.errors import InputError

GENERATED_COLUMN = 4  # region_generated in graphs.node_feature_names


def _model(n_features: int, hidden: int):
    import torch
    from torch_geometric.nn import GATv2Conv, global_max_pool, global_mean_pool

    class AttentionGraphGAT(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.input = torch.nn.Linear(n_features, hidden)
            self.conv1 = GATv2Conv(hidden, hidden, heads=2, concat=False, edge_dim=1, dropout=0.1)
            self.conv2 = GATv2Conv(hidden, hidden, heads=2, concat=False, edge_dim=1, dropout=0.1)
            self.head = torch.nn.Sequential(torch.nn.Linear(3 * hidden, hidden), torch.nn.ReLU(),
                                            torch.nn.Dropout(0.1), torch.nn.Linear(hidden, 1))

        def forward(self, x, edge_index, edge_attr, batch, generated):
            h = torch.relu(self.input(x))
            h = torch.nn.functional.elu(self.conv1(h, edge_index, edge_attr))
            h = torch.nn.functional.elu(self.conv2(h, edge_index, edge_attr))
            size = int(batch.max()) + 1 if len(batch) else 0
            gen_mean = global_mean_pool(h[generated], batch[generated], size=size)
            pooled = [global_mean_pool(h, batch, size=size), global_max_pool(h, batch, size=size), gen_mean]
            return self.head(torch.cat(pooled, dim=-1)).squeeze(-1)

    return AttentionGraphGAT()


def to_data(graphs: list[dict], labels: np.ndarray | None, mean: np.ndarray, scale: np.ndarray) -> list:
    import torch
    from torch_geometric.data import Data

    out = []
    for index, graph in enumerate(graphs):
        nodes = graph["nodes"]
        x = torch.from_numpy(((nodes - mean) / scale).astype(np.float32))
        edge_index = torch.from_numpy(np.stack([graph["src"], graph["dst"]]).astype(np.int64))
        edge_attr = torch.from_numpy(graph["weight"].astype(np.float32))[:, None]
        generated = torch.from_numpy(nodes[:, GENERATED_COLUMN] > 0.5)
        y = torch.tensor([float(labels[index]) if labels is not None else 0.0])
        out.append(Data(x=x, edge_index=edge_index, edge_attr=edge_attr, y=y, generated=generated))
    return out


def _predict(model, dataset, batch_size: int = 64) -> np.ndarray:
    import torch
    from torch_geometric.loader import DataLoader

    model.eval()
    out = []
    with torch.no_grad():
        for batch in DataLoader(dataset, batch_size=batch_size, shuffle=False):
            out.append(torch.sigmoid(model(batch.x, batch.edge_index, batch.edge_attr, batch.batch, batch.generated)))
    return torch.cat(out).numpy() if out else np.zeros(0)


def train_attention_graph(data, *, hidden: int = 64, epochs: int = 40, batch_size: int = 32, lr: float = 1e-3,
                          seed: int = 0, test_fraction: float = 0.2, tasks: str | None = None,
                          shuffle_labels: bool = False):
    """Train on the training groups; returns (StoredProbe, report with held-out AUROC)."""
    import torch
    from torch_geometric.loader import DataLoader
    from workbench.probes.evaluate import auroc
    from workbench.probes.store import StoredProbe

    require_torch_geometric()
    rows = training_split(data, seed=seed, test_fraction=test_fraction, tasks=tasks, shuffle_labels=shuffle_labels)
    data, y_all, fit_rows, val_rows = rows.data, rows.labels, rows.fit_rows, rows.val_rows
    graphs = data.graphs()
    stacked = np.concatenate([graphs[i]["nodes"] for i in fit_rows])
    mean, scale = standardiser(stacked, slice(None))  # node features of the training graphs
    dataset = to_data(graphs, y_all, mean, scale)
    model = _model(stacked.shape[1], hidden)
    optimizer = torch.optim.Adam(model.parameters(), lr=lr, weight_decay=1e-4)
    loss_fn = torch.nn.BCEWithLogitsLoss(pos_weight=pos_weight(y_all[fit_rows]))
    generator = torch.Generator().manual_seed(seed)
    loader = DataLoader([dataset[i] for i in fit_rows], batch_size=batch_size, shuffle=True, generator=generator)
    best = BestEpoch()
    for epoch in range(epochs):
        model.train()
        total = 0.0
        for batch in loader:
            logits = model(batch.x, batch.edge_index, batch.edge_attr, batch.batch, batch.generated)
            loss = loss_fn(logits, batch.y)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            total += loss.item() * batch.num_graphs
        score = auroc(y_all[val_rows], _predict(model, [dataset[i] for i in val_rows])) if len(val_rows) else None
        best.update(model, score if score is not None else -total, epoch)
    best.restore(model)
    scores = _predict(model, dataset)
    config = {"detector": "attention-graph", "hidden": hidden, "n_features": int(stacked.shape[1]),
              "node_features": data.meta["node_features"], "top_k": data.meta.get("top_k"),
              "edges_per_node": data.meta.get("edges_per_node"), "model": data.meta["model"],
              "layers": data.meta["layers"], "heads": data.meta["heads"], "dataset": str(data.path),
              "fingerprint": rows.fingerprint, "tasks": tasks,
              "split": {"seed": seed, "test_fraction": test_fraction},
              "epochs": epochs, "best_epoch": best.epoch, "label": "1 = hallucinated"}
    report = rows.report(scores)
    config["metrics"] = report
    tensors = {**state_to_numpy(model), "scaler_mean": mean, "scaler_scale": scale}
    return StoredProbe(config, tensors), report


def score_attention_graph(stored, data, rows: np.ndarray) -> np.ndarray:
    """P(hallucinated) of the given dataset rows."""
    require_torch_geometric()
    config, tensors = stored.config, stored.tensors
    if len(data.meta["node_features"]) != config["n_features"]:
        raise InputError(f"the probe expects {config['n_features']} node features (a {config['layers']}-layer model) "
                         f"but {data.path} has {len(data.meta['node_features'])}")
    graphs = data.graphs()
    model = _model(config["n_features"], config["hidden"])
    load_state(model, tensors)
    return _predict(model, to_data([graphs[i] for i in rows], None, tensors["scaler_mean"], tensors["scaler_scale"]))
