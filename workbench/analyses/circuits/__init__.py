"""SVD circuit tracing (Franco & Crovella 2024, "Sparse Attention Decomposition Applied to Circuit Tracing";
reference: gaabrielfranco/sparse-attention-decomposition, utils.py, full_tracing_*.py).

For every firing of every head (every (i, j) with A_ij >= firing_threshold, score >= 0, key 0 skipped, like
the reference), the score is decomposed in the singular basis of the head's augmented Omega (see _omega.py:
`basis="reference"`, the released code's TransformerLens-folded coordinates, or "raw"; RoPE models use the
offset-dependent Omega(j - i)), the few components that explain it are kept, and each upstream head's
output at the query position (Q side) and key position (K side) is scored against the kept directions
(_firings.py). Per firing and side, the upstream heads that cover `coverage` of the summed upstream-head
contribution (largest first, the reference's rule) become edges of a head-to-head communication graph:

    edge (L{l'}H{h'} -> L{l}H{h}): q_count / k_count firings of the downstream head where the upstream head
    was kept on that side; q_weight / k_weight = mean over the downstream head's firings of its
    contribution as a share of the side's whole (0 where not kept); weight = q_weight + k_weight.
    The side's whole is x~ . a (query) or x~ . b (key): the kept score itself with the additive "score"
    attribution; it splits exactly into upstream heads, MLPs, biases, embeddings and the norm's constant.

Needs a trace captured with `decomposition=True` and the model's weights (`model=`, a LoadedModel or a
transformers model): like VHD, this analysis reads weights the trace does not hold (W_Q, W_K, norms, RoPE).
Checks: the full-rank reconstruction of every firing's score must match the stored pre-softmax score, and
(with the additive "score" attribution) the upstream parts must sum to the kept score.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar, Literal

import networkx as nx
import numpy as np
import torch

from workbench.analyses.decomposed import check_trace, layer_tensor
from workbench.analyses.circuits._firings import Firing, decompose, find_firings, head_outputs
from workbench.analyses.circuits._omega import BASES, SUPPORTED, check_basis, omega_forms
from workbench.analyses.result import HeadMetric, Result, stored_version
from workbench.errors import InputError, WorkbenchError

__all__ = ["BASES", "CircuitsResult", "analyse", "check_basis", "omega_forms"]

METHOD = "Franco & Crovella 2024, sparse attention decomposition (SVD of the augmented Omega)"
MAX_RECONSTRUCTION_ERROR = 1e-3  # relative to the largest |score| of the firings
_FIRING_CHUNK = 1024


@dataclass(frozen=True)
class CircuitsResult(Result):
    """The head-to-head graph (nodes L{layer}H{head} with their firings, edges upstream -> downstream), the
    firings with their kept upstream heads (query row, key position) and checks."""

    analysis: ClassVar[str] = "circuits"
    schema_version: ClassVar[int] = 1

    model: str
    options: dict
    graph: nx.DiGraph = field(compare=False)
    firings: tuple[dict, ...]
    stats: dict

    def edges_into(self, layer: int, head: int) -> list[tuple[str, dict]]:
        """(upstream node, attributes) of the edges into L{layer}H{head}, strongest first."""
        node = f"L{layer}H{head}"
        if node not in self.graph:
            return []
        edges = [(source, data) for source, _, data in self.graph.in_edges(node, data=True)]
        return sorted(edges, key=lambda item: -item[1]["weight"])

    def to_json(self) -> dict:
        return {"analysis": self.analysis, "schema_version": self.schema_version, "method": METHOD,
                "model": self.model, "options": self.options, "graph": nx.node_link_data(self.graph, edges="edges"),
                "firings": list(self.firings), "stats": self.stats}

    @classmethod
    def from_json(cls, data: dict) -> CircuitsResult:
        stored_version(data, cls)
        graph = data["graph"]
        edges = "edges" if "edges" in graph or "links" not in graph else "links"
        return cls(model=str(data.get("model", "?")), options=dict(data.get("options") or {}),
                   graph=nx.node_link_graph(graph, directed=True, multigraph=False, edges=edges),
                   firings=tuple(data.get("firings") or ()), stats=dict(data.get("stats") or {}))

    def head_metrics(self) -> dict[str, HeadMetric]:
        """Firings per head (sparse: heads the graph does not hold are blank)."""
        nodes = [data for _, data in self.graph.nodes(data=True) if "layer" in data and "head" in data]
        if not nodes:
            return {}
        values = np.full((1 + max(n["layer"] for n in nodes), 1 + max(n["head"] for n in nodes)), np.nan)
        for node in nodes:
            values[node["layer"], node["head"]] = node.get("firings", np.nan)
        threshold, basis = self.options.get("firing_threshold", "threshold"), self.options.get("basis", "raw")
        return {"circuit_firings": HeadMetric(values, "circuit firings", f"firings (A_ij >= {threshold}) of each head "
                                              f"in the SVD circuit analysis ({basis} Omega basis); blank = none",
                                              sparse=True)}


def _covectors(firings: list[Firing], forms, trace) -> dict:
    """Per firing: component covectors [F, d_model] (norm folded in, per-position scale divided out) and
    the constant parts (norm bias and the augmented 1) of both sides."""
    n_model = trace.dims["stacks"]["text"]["d_model"]
    out = {side: torch.zeros(len(firings), n_model) for side in ("q", "k")}
    const = {side: torch.zeros(len(firings), dtype=torch.float64) for side in ("q", "k")}
    cache: dict[int, torch.Tensor] = {}
    for index, firing in enumerate(firings):
        if firing.layer not in cache:
            cache[firing.layer] = layer_tensor(trace, firing.layer, "hidden_in")
        norm = forms.norm(firing.layer)
        for side, position, covector in (("q", firing.query, firing.query_covector),
                                         ("k", firing.key, firing.key_covector)):
            residual = cache[firing.layer][position]
            head_part = covector[:-1].float()
            out[side][index] = norm.linear_part(head_part) / norm.scale(residual)
            const[side][index] = float(norm.bias.double() @ covector[:-1] + covector[-1])
    return {"w": out, "const": const}


def _upstream(trace, forms, firings: list[Firing], covectors: dict, n_layers: int, n_heads: int) -> dict:
    """Contributions [F, layer, head] of every upstream head on each side, plus the rest (MLPs, biases,
    embeddings, constants) [F] for the completeness check. In the reference basis a head's output excludes
    its value bias (fold_value_biases moves b_V W_O into the output bias, part of the rest)."""
    count = len(firings)
    layers = torch.tensor([f.layer for f in firings])
    positions = {"q": torch.tensor([f.query for f in firings]), "k": torch.tensor([f.key for f in firings])}
    heads = {side: torch.zeros(count, n_layers, n_heads) for side in ("q", "k")}
    rest = {side: covectors["const"][side].clone() for side in ("q", "k")}
    first = layer_tensor(trace, 0, "hidden_in")
    for side in ("q", "k"):
        rest[side] += (first[positions[side]] * covectors["w"][side]).sum(-1).double()
    for upstream in range(n_layers - 1):
        chosen = (layers > upstream).nonzero().flatten()
        if not len(chosen):
            continue
        needed = torch.unique(torch.cat([positions["q"][chosen], positions["k"][chosen]]))  # sorted
        outputs = head_outputs(trace, upstream, needed)  # [head, len(needed), d_model]
        moved = torch.einsum("he,dhe->hd", forms.value_bias(upstream), layer_tensor(trace, upstream, "o_weight"))
        outputs = outputs - moved[:, None]  # rows of A sum to 1: A (V - b_V) W_O = A V W_O - b_V W_O
        after = layer_tensor(trace, upstream + 1, "hidden_in")
        before = layer_tensor(trace, upstream, "hidden_in")
        attn_out = layer_tensor(trace, upstream, "attn_out")
        mlp = (after - before - attn_out)[needed]
        bias = layer_tensor(trace, upstream, "o_bias") + moved.sum(0)
        for side in ("q", "k"):
            for start in range(0, len(chosen), _FIRING_CHUNK):
                block = chosen[start:start + _FIRING_CHUNK]
                where = torch.searchsorted(needed, positions[side][block])
                w = covectors["w"][side][block]  # [F', d_model]
                heads[side][block, upstream] = torch.einsum("hfd,fd->fh", outputs[:, where], w)
                rest[side][block] += ((mlp[where] + bias) * w).sum(-1).double()
    return {"heads": heads, "rest": rest}


def _covering(values: torch.Tensor, coverage: float) -> list[int]:
    """Indices of the largest values whose running sum first exceeds coverage * total (the reference's
    contrib_ahs rule, ties at the cutoff kept); none when the total is not positive."""
    total = float(values.sum())
    if total <= 0 or not len(values):
        return []
    ordered = torch.sort(values, descending=True).values
    passed = (torch.cumsum(ordered, 0) > coverage * total).nonzero()
    cutoff = float(ordered[int(passed[0])]) if len(passed) else float(ordered[-1])
    return (values >= cutoff).nonzero().flatten().tolist()


def analyse(trace, *, model, firing_threshold: float = 0.5, component_threshold: float = 1.0,
            coverage: float = 0.7, min_share: float = 0.02, attribution: Literal["score", "projection"] = "score",
            skip_first_key: bool = True, basis: Literal["reference", "raw"] = "reference") -> CircuitsResult:
    """Trace head-to-head communication through the firings of every head (see the module docstring).

    model: the traced model's weights (LoadedModel or transformers model). firing_threshold: minimum A_ij.
    component_threshold: share of a firing's score its kept singular components must reach.
    coverage: share of the upstream-head contribution the kept upstream heads must cover, per side.
    min_share: drop kept upstream heads carrying less than this share of the side's whole (x~ . covector),
        so that rounding noise on a side no head writes to never becomes an edge.
    attribution: "score" (additive share of the kept score) or "projection" (the reference code's form).
    basis: the coordinates of Omega (_omega.py): "reference", the released code's TransformerLens-folded basis
        (x = the norm's normalised input, gain and bias folded into centred W_Q, W_K; b_V in the output
        bias), or "raw" (x = the norm's output, the model's own W_Q, W_K). Scores are the same; singular
        values, kept components and upstream shares are not.

    >>> import workbench
    >>> model = workbench.load_model("planted-induction")
    >>> t = workbench.trace(model, "f x r c e l f x r c e l", raw=True, decomposition=True)
    >>> [(upstream, edge["sides"]) for upstream, edge in analyse(t, model=model).edges_into(1, 2)]
    [('L0H3', 'k')]
    """
    check_trace(trace, "circuits")
    if not 0 < firing_threshold <= 1 or not 0 < coverage <= 1 or not 0 < component_threshold <= 1:
        raise InputError("--firing-threshold, --coverage and --component-threshold must be in (0, 1]")
    if attribution not in ("score", "projection"):
        raise InputError(f"attribution must be 'score' or 'projection', got {attribution!r}")
    forms = omega_forms(model, check_basis(basis))
    stack = forms.stack
    n_layers, n_heads = trace.n_layers(), trace.n_heads()
    if (stack.n_layers, stack.n_heads, stack.d_model) != (n_layers, n_heads, trace.dims["stacks"]["text"]["d_model"]):
        raise InputError(f"the model ({stack.n_layers} layers x {stack.n_heads} heads) is not the traced model "
                         f"({n_layers} x {n_heads}); pass the model named in the bundle ({trace.model.get('name')})")
    firings: list[Firing] = []
    for layer in range(n_layers):
        found = find_firings(trace, layer, firing_threshold=firing_threshold, skip_first_key=skip_first_key)
        if not found:
            continue
        normed = forms.norm(layer)(layer_tensor(trace, layer, "hidden_in")).double()
        augmented = torch.cat([normed, torch.ones(len(normed), 1, dtype=torch.float64)], -1)  # x~ [query_pos, d+1]
        for head in sorted({item[0] for item in found}):
            group = [item for item in found if item[0] == head]
            queries, keys = [item[1] for item in group], [item[2] for item in group]
            terms, kept, kept_score, a, b = decompose(
                forms.head(layer, head), augmented[queries], augmented[keys], [j - i for i, j in zip(queries, keys)],
                component_threshold=component_threshold, attribution=attribution)
            for index, (_, i, j, weight, score) in enumerate(group):
                firings.append(Firing(layer, head, i, j, weight, score, float(terms[index].sum()), kept[index],
                                      float(kept_score[index]), a[index], b[index]))
    scale = max([abs(f.score) for f in firings] or [1.0])
    reconstruction = max([abs(f.reconstructed - f.score) for f in firings] or [0.0]) / max(scale, 1e-6)
    if reconstruction > MAX_RECONSTRUCTION_ERROR:
        raise WorkbenchError(f"the SVD of Omega does not reproduce this model's attention scores (relative error "
                             f"{reconstruction:.2g}): its weights differ from the traced model's, or its attention "
                             f"is not one circuit tracing supports ({SUPPORTED})")
    graph, records, completeness = _graph(trace, forms, firings, coverage, min_share, attribution, n_layers, n_heads)
    kept_counts = torch.tensor([len(f.components) for f in firings], dtype=torch.float64)
    options = {"firing_threshold": firing_threshold, "component_threshold": component_threshold,
               "coverage": coverage, "min_share": min_share, "attribution": attribution,
               "skip_first_key": skip_first_key, "basis": basis}
    stats = {"firings": len(firings), "rope": forms.head(0, 0).inv_freq is not None,
             "components_kept_mean": round(float(kept_counts.mean()), 4) if len(firings) else None,
             "components_kept_max": int(kept_counts.max()) if len(firings) else None,
             "max_reconstruction_error": reconstruction, "max_completeness_error": completeness}
    return CircuitsResult(trace.model.get("name", "?"), options, graph, tuple(records), stats)


def _graph(trace, forms, firings, coverage, min_share, attribution, n_layers, n_heads):
    graph = nx.DiGraph()
    records, completeness = [], 0.0
    if not firings:
        return graph, records, completeness
    covectors = _covectors(firings, forms, trace)
    upstream = _upstream(trace, forms, firings, covectors, n_layers, n_heads)
    fired: dict[tuple[int, int], int] = {}
    for firing in firings:
        fired[(firing.layer, firing.head)] = fired.get((firing.layer, firing.head), 0) + 1
    for (layer, head), count in fired.items():
        graph.add_node(f"L{layer}H{head}", layer=layer, head=head, firings=count)
    for index, firing in enumerate(firings):
        record = {"layer": firing.layer, "head": firing.head, "query": firing.query, "key": firing.key,
                  "attention": round(firing.attention, 6), "score": round(firing.score, 6),
                  "components": firing.components, "kept_score": round(firing.kept_score, 6)}
        for side in ("q", "k"):
            values = upstream["heads"][side][index, :firing.layer].flatten().double()
            # The side's whole: x~ . covector (the kept score for "score" attribution), split exactly into
            # upstream heads + the rest; shares are relative to it.
            whole = float(values.sum()) + float(upstream["rest"][side][index])
            if attribution == "score":
                completeness = max(completeness, abs(whole - firing.kept_score) / max(abs(firing.kept_score), 1e-6))
            shares = values / whole if whole > 0 else torch.zeros_like(values)
            kept = [k for k in _covering(values, coverage) if shares[k] >= min_share]
            record[f"{side}_upstream"] = [[k // n_heads, k % n_heads, round(float(shares[k]), 6)] for k in kept]
            for k in kept:
                source, target = f"L{k // n_heads}H{k % n_heads}", f"L{firing.layer}H{firing.head}"
                if source not in graph:
                    graph.add_node(source, layer=k // n_heads, head=k % n_heads, firings=0)
                if not graph.has_edge(source, target):
                    graph.add_edge(source, target, q_count=0, k_count=0, q_total=0.0, k_total=0.0, seen=set())
                data = graph[source][target]
                data["seen"].add(index)
                data[f"{side}_count"] += 1
                data[f"{side}_total"] += float(shares[k])
        records.append(record)
    for source, target, data in graph.edges(data=True):
        count = graph.nodes[target]["firings"]
        data["q_weight"] = round(data.pop("q_total") / count, 6)
        data["k_weight"] = round(data.pop("k_total") / count, 6)
        data["weight"] = round(data["q_weight"] + data["k_weight"], 6)
        data["count"] = len(data.pop("seen"))
        data["sides"] = "".join(side for side in ("q", "k") if data[f"{side}_count"])
    return graph, records, completeness
