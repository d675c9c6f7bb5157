"""Graph of generations (Nonkes et al. 2024; docs/probes.md, 'Graph detectors'), with GATv2 instead of GAT.

- Nodes: generations. Embedding = the mean residual stream entering one layer over the rows that produced
  the answer ("hidden", default layer L // 2), or the MiniLM sentence embedding of question + answer
  ("minilm"). Standardised with training statistics.
- Edges: cosine similarity > threshold (0.85, the paper's) between standardised embeddings, each node
  keeping at most `max_degree` strongest links (a bound the paper does not need for its 768-d BERT
  embeddings but dense hidden states do), or the k nearest neighbours ("knn"); undirected.
- Optional contrastive pre-training of the embedder (MLP d -> d -> 128, ReLU) on the training nodes with the
  supervised InfoNCE loss, temperature 0.07: positives = other nodes with the same label. The anchor itself
  is left out of the denominator (SupCon; the reference keeps it).
- Classifier: embedder -> Linear(128, 32) -> GATv2Conv(32, 1, heads=2, averaged, dropout 0.2), full-batch,
  transductive: every node is in the graph, only training labels enter the loss; the epoch is chosen on a
  validation subset of the training groups. A saved probe keeps its training nodes, so new generations are
  scored by joining them to that graph.
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

EMBEDDINGS = ("hidden", "minilm")
EDGES = ("threshold", "knn")


def node_embeddings(data, embedding: str, hidden_layer: int | None) -> tuple[np.ndarray, int | None]:
    if embedding == "minilm":
        if not data.has("text_embedding"):
            raise InputError(f"{data.path} has no MiniLM embeddings; rebuild it without --no-embed")
        return data.per_row("text_embedding").astype(np.float32), None
    if embedding != "hidden":
        raise InputError(f"unknown --embedding {embedding!r}; use hidden or minilm")
    layers = data.meta["layers"]
    layer = layers // 2 if hidden_layer is None else hidden_layer
    if not 0 <= layer < layers:
        raise InputError(f"--hidden-layer must be in 0..{layers - 1}")
    return data.per_row("hidden_mean", (layers, -1))[:, layer].astype(np.float32), layer


def build_edges(X: np.ndarray, *, edges: str, threshold: float, k: int, max_degree: int):
    """Undirected edge_index [2, edge] and cosine weights of the similarity graph over rows of X."""
    import torch

    Z = torch.nn.functional.normalize(torch.from_numpy(X).float(), dim=-1)
    sim = Z @ Z.T
    sim.fill_diagonal_(-2.0)
    width = min(k if edges == "knn" else max_degree, len(X) - 1)
    if width <= 0:
        return torch.zeros((2, 0), dtype=torch.long), torch.zeros(0)
    values, index = sim.topk(width, dim=1)
    rows = torch.arange(len(X))[:, None].expand_as(index)
    keep = torch.ones_like(values, dtype=torch.bool) if edges == "knn" else values > threshold
    from torch_geometric.utils import coalesce

    src, dst, weight = index[keep], rows[keep], values[keep]
    edge_index = torch.cat([torch.stack([src, dst]), torch.stack([dst, src])], 1)
    return coalesce(edge_index, torch.cat([weight, weight]), num_nodes=len(X), reduce="max")


def _model(d_in: int):
    import torch
    from torch_geometric.nn import GATv2Conv

    class NonkesGAT(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.embedder = torch.nn.Sequential(torch.nn.Linear(d_in, d_in), torch.nn.ReLU(),
                                                torch.nn.Linear(d_in, 128))
            self.linear = torch.nn.Linear(128, 32)
            self.conv = GATv2Conv(32, 1, heads=2, concat=False, dropout=0.2)

        def forward(self, x, edge_index):
            return self.conv(self.linear(self.embedder(x)), edge_index).squeeze(-1)

    return NonkesGAT()


def supcon_loss(features, labels, temperature: float = 0.07):
    """Supervised InfoNCE: mean over anchors of -log softmax(similarity / T) over its same-label nodes."""
    import torch

    z = torch.nn.functional.normalize(features, dim=-1)
    logits = z @ z.T / temperature
    eye = torch.eye(len(z), dtype=torch.bool)
    logits = logits.masked_fill(eye, float("-inf"))
    positives = (labels[:, None] == labels[None, :]) & ~eye
    log_prob = logits - torch.logsumexp(logits, dim=1, keepdim=True)
    counts = positives.sum(1)
    has = counts > 0
    loss = -(log_prob.masked_fill(~positives, 0.0).sum(1)[has] / counts[has])
    return loss.mean() if has.any() else logits.new_zeros(())


def pretrain(model, X, y, rows, *, epochs: int, batch: int = 256, seed: int = 0) -> list[float]:
    import torch

    generator = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.AdamW(model.embedder.parameters(), lr=1e-3)
    history = []
    for _ in range(epochs):
        order = torch.from_numpy(rows)[torch.randperm(len(rows), generator=generator)]
        total = 0.0
        for first in range(0, len(order), batch):
            chunk = order[first:first + batch]
            loss = supcon_loss(model.embedder(X[chunk]), y[chunk])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            total += loss.item()
        history.append(total)
    return history


def train_nonkes(data, *, embedding: str = "hidden", hidden_layer: int | None = None, edges: str = "threshold",
                 threshold: float = 0.85, k: int = 10, max_degree: int = 32, contrastive: bool = True,
                 pretrain_epochs: int = 100, epochs: int = 300, seed: int = 0, test_fraction: float = 0.2,
                 tasks: str | None = None, shuffle_labels: bool = False):
    """Train on the training groups; returns (StoredProbe, report with held-out AUROC)."""
    import torch
    from workbench.probes.evaluate import auroc
    from workbench.probes.store import StoredProbe

    require_torch_geometric()
    if edges not in EDGES:
        raise InputError(f"unknown --edges {edges!r}; use threshold or knn")
    rows = training_split(data, seed=seed, test_fraction=test_fraction, tasks=tasks, shuffle_labels=shuffle_labels)
    data, y_all, train_rows, fit_rows, val_rows = rows.data, rows.labels, rows.train_rows, rows.fit_rows, rows.val_rows
    X_raw, layer = node_embeddings(data, embedding, hidden_layer)
    mean, scale = standardiser(X_raw, train_rows)
    X = torch.from_numpy((X_raw - mean) / scale)
    y = torch.from_numpy(y_all).float()
    edge_index, _ = build_edges(X.numpy(), edges=edges, threshold=threshold, k=k, max_degree=max_degree)
    model = _model(X.shape[1])
    history = pretrain(model, X, y, fit_rows, epochs=pretrain_epochs, seed=seed) if contrastive else []
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3, weight_decay=5e-4)
    loss_fn = torch.nn.BCEWithLogitsLoss(pos_weight=pos_weight(y_all[fit_rows]))
    best, fit_index = BestEpoch(), torch.from_numpy(fit_rows)
    for epoch in range(epochs):
        model.train()
        loss = loss_fn(model(X, edge_index)[fit_index], y[fit_index])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        model.eval()
        with torch.no_grad():
            logits = model(X, edge_index).numpy()
        best.update(model, auroc(y_all[val_rows], logits[val_rows]) if len(val_rows) else -float(loss), epoch)
    best.restore(model)
    model.eval()
    with torch.no_grad():
        scores = torch.sigmoid(model(X, edge_index)).numpy()
    config = {"detector": "nonkes", "embedding": embedding, "hidden_layer": layer, "edges": edges,
              "threshold": threshold, "k": k, "max_degree": max_degree, "contrastive": contrastive,
              "d_in": int(X.shape[1]), "model": data.meta["model"], "layers": data.meta["layers"],
              "heads": data.meta["heads"], "dataset": str(data.path), "fingerprint": rows.fingerprint, "tasks": tasks,
              "split": {"seed": seed, "test_fraction": test_fraction}, "best_epoch": best.epoch,
              "n_edges": int(edge_index.shape[1]), "pretrain_final_loss": history[-1] if history else None,
              "label": "1 = hallucinated"}
    report = {**rows.report(scores), "graph": {"nodes": len(X), "edges": int(edge_index.shape[1])}}
    config["metrics"] = report
    tensors = {**state_to_numpy(model), "nodes": X_raw[train_rows], "node_labels": y_all[train_rows].astype(np.int64),
               "scaler_mean": mean, "scaler_scale": scale}
    return StoredProbe(config, tensors), report


def score_nonkes(stored, data, rows: np.ndarray) -> np.ndarray:
    """P(hallucinated) of dataset rows, each joined to the probe's stored training graph."""
    import torch

    require_torch_geometric()
    config, tensors = stored.config, stored.tensors
    X_new, _ = node_embeddings(data, config["embedding"], config["hidden_layer"])
    if X_new.shape[1] != config["d_in"]:
        raise InputError(f"the probe expects {config['d_in']}-d node embeddings but {data.path} gives {X_new.shape[1]}")
    nodes = np.concatenate([tensors["nodes"], X_new[rows]])
    X = torch.from_numpy((nodes - tensors["scaler_mean"]) / tensors["scaler_scale"]).float()
    edge_index, _ = build_edges(X.numpy(), edges=config["edges"], threshold=config["threshold"], k=config["k"],
                                max_degree=config["max_degree"])
    model = _model(config["d_in"])
    load_state(model, tensors)
    model.eval()
    with torch.no_grad():
        return torch.sigmoid(model(X, edge_index)).numpy()[len(tensors["nodes"]):]
