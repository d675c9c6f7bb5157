"""Firings and their sparse decomposition in the singular basis of Omega (Franco & Crovella 2024, section 3).

A firing is (layer, head, query i, key j) with A_ij >= the firing threshold and a non-negative score. Its
score splits exactly into d_head terms t_k = s_k (x~_i . u_k)(x~_j . v_k); the kept components are the
fewest largest terms whose running sum reaches `component_threshold` of the score (1.0 = the whole score, the
reference tracing run's setting; "reaches" allows 1e-4 of the score for rounding). The kept part of the score is then carried back to the residual of each
side as a covector: query side a = sum_{k kept} s_k (x~_j . v_k) u_k, key side b = sum_k s_k (x~_i . u_k) v_k,
so kept score = x~_i . a = x~_j . b ("score" attribution, additive). The reference code instead projects on
sum_k sign(x~_i . u_k) sqrt(s_k) u_k (and v_k): `attribution="projection"`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from workbench.analyses.decomposed import attention_rows, layer_tensor, scores_rows

_ROW_CHUNK = 256
SLACK = 1e-4  # "reaches the threshold" within this share of the score: float noise must not add components


@dataclass
class Firing:
    layer: int
    head: int
    query: int
    key: int
    attention: float
    score: float  # the model's pre-softmax score (stored query . key)
    reconstructed: float  # sum of all d_head terms (should equal score)
    components: list[int]  # kept singular components, largest term first
    kept_score: float
    query_covector: torch.Tensor | None = None  # [d_model + 1] a (or its projection form)
    key_covector: torch.Tensor | None = None


def find_firings(trace, layer: int, *, firing_threshold: float, skip_first_key: bool) -> list[tuple]:
    """(head, query, key, attention, score) of every firing of the layer: every visible (i, j) with
    A_ij >= firing_threshold, not only a row's argmax (a row splitting 0.5/0.5 fires twice; below 0.5 a row
    may fire several times), with a non-negative score and, when skip_first_key, j > 0 (the reference's
    rules). Ordered by head, then query, then key."""
    query, key = layer_tensor(trace, layer, "query"), layer_tensor(trace, layer, "key")
    n = query.shape[1]
    found = []
    for start in range(0, n, _ROW_CHUNK):
        rows = torch.arange(start, min(start + _ROW_CHUNK, n))
        attention = attention_rows(query, key, rows)  # [head, row, key_pos]; masked keys are exactly 0
        scores = scores_rows(query, key, rows)
        firing = (attention >= firing_threshold) & (scores >= 0)
        if skip_first_key:
            firing[..., 0] = False
        for head, row, j in firing.nonzero().tolist():
            found.append((head, int(rows[row]), j, float(attention[head, row, j]), float(scores[head, row, j])))
    return sorted(found, key=lambda item: item[:3])


def decompose(form, x_i: torch.Tensor, x_j: torch.Tensor, offsets: list[int], *, component_threshold: float,
              attribution: str) -> tuple:
    """Decompose the firings of one head at once. x_i, x_j [firing, d_model + 1] are the augmented
    layer-normed residuals (float64) at the query and key positions; offsets their key - query distances.
    Returns terms [firing, d_head], kept [firing, d_head] (bool), a and b [firing, d_model + 1]."""
    cores = [form.core(offset) for offset in offsets]
    u = torch.stack([core[0] for core in cores])  # [firing, d_head, d_head]
    s = torch.stack([core[1] for core in cores])
    v = torch.stack([core[2] for core in cores])
    along_u = torch.einsum("fd,fdk->fk", x_i @ form.q_basis, u)  # x~_i . u_k
    along_v = torch.einsum("fd,fdk->fk", x_j @ form.k_basis, v)  # x~_j . v_k
    terms = s * along_u * along_v
    total = terms.sum(-1, keepdim=True)
    ordered, order = torch.sort(terms, -1, descending=True)
    reached = torch.cumsum(ordered, -1) >= component_threshold * total - SLACK * total.abs()
    reached[:, -1] = True  # a firing that never reaches the threshold keeps everything
    count = reached.to(torch.int64).argmax(-1, keepdim=True) + 1  # first component reaching it
    kept_sorted = torch.arange(terms.shape[-1])[None, :] < count
    kept = torch.zeros_like(kept_sorted).scatter_(-1, order, kept_sorted)
    if attribution == "projection":
        weights_u = weights_v = torch.sign(along_u) * s.sqrt() * kept
    else:
        weights_u, weights_v = s * along_v * kept, s * along_u * kept
    a = torch.einsum("fdk,fk->fd", u, weights_u) @ form.q_basis.T
    b = torch.einsum("fdk,fk->fd", v, weights_v) @ form.k_basis.T
    components = [order[f, :int(count[f])].tolist() for f in range(len(offsets))]
    return terms, components, (terms * kept).sum(-1), a, b


def head_outputs(trace, layer: int, positions: torch.Tensor) -> torch.Tensor:
    """Each head's output through its slice of W_O (bias excluded) at `positions`: [head, len, d_model]."""
    query, key = layer_tensor(trace, layer, "query"), layer_tensor(trace, layer, "key")
    value, weight = layer_tensor(trace, layer, "value"), layer_tensor(trace, layer, "o_weight")
    group = query.shape[0] // value.shape[0]
    attention = attention_rows(query, key, positions)
    mixed = torch.einsum("hpj,hje->hpe", attention, value.repeat_interleave(group, 0))
    return torch.einsum("hpe,dhe->hpd", mixed, weight)
