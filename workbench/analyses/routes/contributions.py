"""The L1 proximity contributions of Ferrando & Voita 2024, computed exactly without the [n, n, H, d] tensor.

A part x of a whole y contributes c(x) = max(||y||_1 - ||y - x||_1, EPS); a whole's parts are normalised
to sum to 1. For the attention block at query i the parts are x_jh = A_ij^h * vo_jh (vo_jh = v_j^h W_O^h,
plus b_O / H with the bias shared) and the residual entering the layer.

Exactness without touching every (j, h, d): with s = sign(y) (+1 where y_d = 0) and t = s * x,
    ||y||_1 - ||y - x||_1 = sum_d t_d - 2 * sum_d relu(t_d - |y_d|)          (exact, coordinate by coordinate)
The first sum is one matrix product for all parts. The correction is non-zero only in coordinates where
|x_d| > |y_d|. The bound ||x||_inf = A_ij^h * ||vo_jh||_inf (one multiply per part) prunes: a part with
||x||_inf <= theta can only cross in the few coordinates D = {d : |y_d| < theta}, so its correction is
summed over D alone; the remaining "heavy" parts (large attention) get the exact L1 distance over all of
d_model. theta is chosen per query row to minimise the work. Every part's contribution is exact.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

EPS = 1e-5  # the reference implementation's floor on a part's contribution
_CANDIDATE_DIMS = (0, 4, 16, 64)  # sizes of D tried per query row
_HEAVY_CHUNK = 4096  # heavy parts whose exact L1 distance is computed at once ([chunk, d_model] floats)


@dataclass
class WorkCounter:
    """How much of the work the bound saved: parts seen, parts given exact full-width L1 distances."""

    parts: int = 0
    heavy_parts: int = 0
    correction_coordinates: int = 0

    def to_json(self) -> dict:
        return {"parts": self.parts, "exact_full_width_parts": self.heavy_parts,
                "pruned_fraction": round(1 - self.heavy_parts / max(self.parts, 1), 6),
                "correction_coordinates": self.correction_coordinates}


def _signs(whole: torch.Tensor) -> torch.Tensor:
    return torch.where(whole >= 0, 1.0, -1.0).to(whole.dtype)


def proximity(parts: torch.Tensor, whole: torch.Tensor) -> torch.Tensor:
    """Unnormalised contributions max(||y||_1 - ||y - x||_1, EPS) of parts [..., d_model] to whole [d_model]."""
    return (whole.abs().sum(-1) - (whole - parts).abs().sum(-1)).clamp_min(EPS)


def attention_parts(whole: torch.Tensor, attention: torch.Tensor, value_out: torch.Tensor,
                    value_out_max: torch.Tensor, visible: torch.Tensor, work: WorkCounter) -> torch.Tensor:
    """Unnormalised contributions of every (key, head) part to the attention-block whole of each query row.

    whole [query, d_model] (residual after attention of each row); attention [head, query, key_pos] (zero
    on keys a row does not see); value_out [head, key_pos, d_model] (vo_jh); value_out_max [head, key_pos]
    (||vo_jh||_inf); visible [query] number of keys each row sees (keys 0..visible-1).
    Returns raw [head, query, key_pos] with EPS floors on visible keys and 0 elsewhere.
    Working set: the [head, query, key_pos] blocks (4 of them) plus [head, key_pos, |D|] and a heavy chunk.
    """
    heads, rows, n = attention.shape
    d_model = whole.shape[-1]
    signs = _signs(whole)
    magnitude = whole.abs()
    whole_norm = magnitude.sum(-1)
    raw = torch.einsum("hjd,md->hmj", value_out, signs).mul_(attention)  # sum_d t_d for every part
    bound = attention * value_out_max[:, None, :]  # ||x||_inf
    # Per row, the D size (from _CANDIDATE_DIMS) that minimises heavy * d_model + heads * visible * |D|.
    sizes = torch.tensor([min(size, d_model) for size in _CANDIDATE_DIMS])
    ordered = torch.cat([magnitude.sort(-1).values, torch.full((rows, 1), float("inf"))], -1)
    levels = ordered[:, sizes]  # [row, candidate]
    seen_keys = torch.arange(n)[None, :] < visible[:, None]  # [row, key_pos]
    heavy_counts = ((bound[..., None] > levels[None, :, None, :]) & seen_keys[None, :, :, None]).sum((0, 2))
    costs = heavy_counts * d_model + heads * visible[:, None] * sizes[None, :]
    thetas = levels.gather(1, costs.argmin(-1, keepdim=True))[:, 0]
    for row in range(rows):
        seen = int(visible[row])
        row_bound = bound[:, row, :seen]
        work.parts += heads * seen
        theta = thetas[row]
        small = (magnitude[row] < theta).nonzero().flatten()
        if len(small):
            work.correction_coordinates += heads * seen * len(small)
            crossing = attention[:, row, :seen, None] * value_out[:, :seen].index_select(-1, small)
            crossing.mul_(signs[row, small]).sub_(magnitude[row, small]).clamp_(min=0)
            raw[:, row, :seen] -= 2 * crossing.sum(-1)
        heavy_index = (row_bound > theta).nonzero()
        work.heavy_parts += len(heavy_index)
        for start in range(0, len(heavy_index), _HEAVY_CHUNK):
            head, key = heavy_index[start:start + _HEAVY_CHUNK].unbind(-1)
            parts = attention[head, row, key, None] * value_out[head, key]
            raw[head, row, key] = whole_norm[row] - (whole[row] - parts).abs().sum(-1)
    return torch.where(seen_keys[None], raw.clamp_min(EPS), torch.zeros((), dtype=raw.dtype))
