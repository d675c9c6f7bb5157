"""The attention graph of one generation: tokens as nodes, strongest attention links as weighted edges.

Beyond Nonkes et al. (whose nodes are whole generations), the attention-graph detector classifies one graph
per generation. Built from statistics the trace always keeps plus its top-k lists (trace with top_k > 0):

- nodes: every token of the text stack; features from the token's OWN query row and its key column, per
  layer as the mean over heads (so the width does not grow with the head count):
      region one-hot (5), relative position (1), then per layer: normalised attention entropy
      (entropy / log visible keys), attention shares on the 5 regions, alpha (attention received per
      query that sees the token, Gu et al.), and the lookback ratio of the row (context variant).
  No output probabilities: the detector sees attention only, so it is compared with the probability
  baselines rather than built on them.
- edges: key j -> query i (information flows from the attended token), weight = the attention of i on j
  averaged over all layer x head pairs, counting only pairs where j is among i's top-k keys; each query
  keeps its `edges_per_node` strongest keys (self links dropped: GATv2 adds its own self loops).
"""

from __future__ import annotations

import math

import numpy as np
import torch

from workbench.errors import InputError
from workbench.traces import metrics
from workbench.traces.tokens import REGIONS

PER_LAYER = ("entropy_norm", *(f"share_{r}" for r in REGIONS), "alpha", "lookback")


def node_feature_names(n_layers: int) -> list[str]:
    return [*(f"region_{r}" for r in REGIONS), "position", *(f"L{layer}.{name}" for layer in range(n_layers)
                                                              for name in PER_LAYER)]


def attention_graph(trace, *, edges_per_node: int = 8) -> dict[str, np.ndarray]:
    """{"nodes" [token, feature] float32, "src", "dst" [edge] int32, "weight" [edge] float32}."""
    n_layers, n = trace.n_layers(), len(trace.tokens)
    if not trace.has("layer_00.top_index"):
        raise InputError("the attention graph needs top-k attention lists: trace with top_k > 0 (--top-k 4)")
    regions = trace.regions
    nodes = [torch.nn.functional.one_hot(regions, len(REGIONS)).double(),
             (torch.arange(n, dtype=torch.float64) / max(n - 1, 1))[:, None]]
    weights = torch.zeros(n * n, dtype=torch.float64)
    pairs = 0
    for layer in range(n_layers):
        stats = trace.layer(layer)
        region_mass, region_count = stats["region_mass"].double(), stats["region_count"]
        entropy = metrics.normalised_entropy(stats["entropy"], region_count)  # [head, query_pos]
        alpha = metrics.alpha(stats["key_mass"], stats["key_count"])  # [head, key_pos]
        ratio = metrics.lookback_ratio(region_mass, region_count)  # [head, query_pos], context variant
        nodes += [entropy.mean(0)[:, None], region_mass.mean(0), alpha.mean(0)[:, None], ratio.mean(0)[:, None]]
        index, weight = stats["top_index"], stats["top_weight"].double()  # [head, query_pos, top]
        query = torch.arange(n)[None, :, None].expand_as(index)
        keep = (index >= 0) & (index != query)
        weights.scatter_add_(0, (query * n + index.clamp_min(0))[keep], weight[keep])
        pairs += index.shape[0]
    weights = (weights / max(pairs, 1)).view(n, n)  # [query, key]
    k = min(edges_per_node, n - 1) if n > 1 else 0
    src, dst, edge_weight = [], [], []
    if k:
        top_weight, top_key = weights.topk(k, dim=1)
        query = torch.arange(n)[:, None].expand_as(top_key)
        keep = top_weight > 0
        src, dst, edge_weight = top_key[keep], query[keep], top_weight[keep]
    features = torch.cat(nodes, dim=1).float().numpy()
    if not math.isfinite(float(np.abs(features).sum())):
        features = np.nan_to_num(features, nan=0.0, posinf=0.0, neginf=0.0)
    return {"nodes": features, "src": np.asarray(src, np.int32), "dst": np.asarray(dst, np.int32),
            "weight": np.asarray(edge_weight, np.float32)}
