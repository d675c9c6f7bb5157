"""Comparing two bundles A and B: what aligns between them, and the differences (always B - A) of what does.

The pairs researchers put side by side: a hallucinated vs a grounded answer (same model, other tokens), with
vs without an image (positions shifted by the image tokens), before vs after an intervention (same model,
often the same tokens), two models of one family (other layer x head grids). Per-head metrics subtract only
on the same grid; heads of models with other grids do not correspond, so only per-layer means (at relative
depth) are put together. Token curves pair positions (or, when the image tokens differ, the non-image tokens
both share, matched in order); attention maps subtract only over sequences of the same length. Everything here reads the
statistics (no maps) except `map_difference`, and is pure: the page adds caching and layout.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from workbench.app.data.maps import Window, window
from workbench.app.data.tensors import stat

from workbench.traces import metrics as definitions

IMAGE = "image"


@dataclass(frozen=True)
class Alignment:
    """How two bundles' text stacks line up: grids, lengths, tokens, and the position pairs curves use."""

    model_a: str
    model_b: str
    grid_a: tuple[int, int]  # (layers, heads)
    grid_b: tuple[int, int]
    n_a: int
    n_b: int
    image_a: int  # image tokens
    image_b: int
    shared_prefix: int  # leading positions whose token ids agree
    differing: int  # positions < min(n_a, n_b) whose token ids differ
    mode: str  # "position": pair p with p; "text": pair the non-image tokens A and B share, in order
    pairs: np.ndarray  # [pair, 2] (position in A, position in B)
    same_bundle: bool = False

    @property
    def same_model(self) -> bool:
        return self.model_a == self.model_b

    @property
    def same_grid(self) -> bool:
        return self.grid_a == self.grid_b

    @property
    def same_length(self) -> bool:
        return self.n_a == self.n_b

    @property
    def same_tokens(self) -> bool:
        return self.same_length and self.differing == 0

    def grid_reason(self) -> str | None:
        """Why per-head metrics are not subtracted (None when they are)."""
        if self.same_grid:
            return None
        return (f"no per-head difference: the grids differ (A {self.grid_a[0]} layers x {self.grid_a[1]} heads, "
                f"B {self.grid_b[0]} x {self.grid_b[1]}), so head i of A is not head i of B; the per-layer means "
                "below are compared at relative depth instead")

    def map_reason(self) -> str | None:
        """Why the attention maps of one head are not subtracted (None when they are)."""
        if not self.same_grid:
            return (f"no map difference: the models' grids differ ({self.grid_a[0]} x {self.grid_a[1]} vs "
                    f"{self.grid_b[0]} x {self.grid_b[1]}), so the same layer and head index name unrelated heads")
        if not self.same_length:
            extra = ""
            if self.image_a != self.image_b:
                extra = f"; image tokens: A {self.image_a}, B {self.image_b}"
            return (f"no map difference: the token sequences have different lengths (A {self.n_a}, B {self.n_b}"
                    f"{extra}), so query and key positions do not correspond")
        return None

    def notes(self) -> list[str]:
        """What aligns and what does not, in sentences for the page."""
        out = ["A and B are the same bundle: every difference is 0"] if self.same_bundle else []
        if self.same_model:
            out.append(f"same model ({self.model_a}), {self.grid_a[0]} layers x {self.grid_a[1]} heads: heads "
                       "correspond one to one")
        elif self.same_grid:
            out.append(f"different models ({self.model_a} vs {self.model_b}) with the same grid "
                       f"({self.grid_a[0]} x {self.grid_a[1]}): heads are compared by index, which is meaningful "
                       "only for models sharing a base (a fine-tune, an edit)")
        else:
            out.append(self.grid_reason())
        if self.same_tokens:
            out.append(f"identical tokens ({self.n_a}): every position corresponds")
        elif self.mode == "text":
            out.append(f"image tokens differ (A {self.image_a}, B {self.image_b}): token curves pair the text tokens "
                       f"both bundles share, in order ({len(self.pairs)} pairs; image tokens and unmatched text left "
                       "out), so x counts those pairs")
        else:
            common = min(self.n_a, self.n_b)
            out.append(f"tokens: A {self.n_a}, B {self.n_b}; the first {self.shared_prefix} are identical, "
                       f"{self.differing} of the {common} common positions hold other tokens; curves pair "
                       "equal positions")
        reason = self.map_reason()
        if reason:
            out.append(reason)
        return out


def _image_positions(trace) -> np.ndarray:
    return np.array([t.i for t in trace.tokens if t.region == IMAGE], dtype=np.int64)


def _matched_text(ids_a, ids_b, image_a, image_b) -> np.ndarray:
    """[pair, 2] positions of the non-image tokens A and B share, in order (longest matching blocks of token ids),
    so what a chat template adds around an image (`<image>` and a newline) does not shift the rest."""
    from difflib import SequenceMatcher

    text_a = np.setdiff1d(np.arange(len(ids_a)), image_a)
    text_b = np.setdiff1d(np.arange(len(ids_b)), image_b)
    matcher = SequenceMatcher(None, ids_a[text_a].tolist(), ids_b[text_b].tolist(), autojunk=False)
    pairs = [(text_a[i + k], text_b[j + k]) for i, j, size in matcher.get_matching_blocks() for k in range(size)]
    return np.array(pairs, dtype=np.int64).reshape(-1, 2)


def align(trace_a, trace_b, stack: str = "text") -> Alignment:
    """The Alignment of two traces' `stack`s (tokens compared by id; `stack` sets the grids)."""
    ids_a = np.array([t.id for t in trace_a.tokens], dtype=np.int64)
    ids_b = np.array([t.id for t in trace_b.tokens], dtype=np.int64)
    common = min(len(ids_a), len(ids_b))
    same = ids_a[:common] == ids_b[:common]
    prefix = int(common if same.all() else np.argmin(same))
    image_a, image_b = _image_positions(trace_a), _image_positions(trace_b)
    if len(image_a) != len(image_b):
        pairs, mode = _matched_text(ids_a, ids_b, image_a, image_b), "text"
    else:
        pairs, mode = np.stack([np.arange(common), np.arange(common)], axis=1), "position"
    return Alignment(
        model_a=str(trace_a.model.get("name", "?")), model_b=str(trace_b.model.get("name", "?")),
        grid_a=(trace_a.n_layers(stack), trace_a.n_heads(stack)), grid_b=(trace_b.n_layers(stack), trace_b.n_heads(stack)),
        n_a=len(ids_a), n_b=len(ids_b), image_a=len(image_a), image_b=len(image_b), shared_prefix=prefix,
        differing=int((~same).sum()), mode=mode, pairs=pairs.astype(np.int64), same_bundle=trace_a is trace_b)


# -- per-head metrics -------------------------------------------------------------------------------
def metric_difference(values_a: np.ndarray | None, values_b: np.ndarray | None) -> np.ndarray | None:
    """B - A of two [layer, head] metrics on the same grid (NaN where either is undefined); None otherwise."""
    if values_a is None or values_b is None:
        return None
    a, b = np.asarray(values_a, dtype=np.float64), np.asarray(values_b, dtype=np.float64)
    return b - a if a.shape == b.shape else None


def layer_profile(values: np.ndarray) -> np.ndarray:
    """[layer] mean over heads of a [layer, head] metric (heads where it is undefined left out)."""
    values = np.asarray(values, dtype=np.float64)
    finite = np.isfinite(values)
    counts = finite.sum(1)
    sums = np.where(finite, values, 0.0).sum(1)
    return np.where(counts > 0, sums / np.maximum(counts, 1), np.nan)


def relative_depth(n_layers: int) -> np.ndarray:
    """Layer l of n at depth l / (n - 1) in [0, 1], so models of different depth share one axis."""
    return np.arange(n_layers) / max(1, n_layers - 1)


# -- token curves -----------------------------------------------------------------------------------
TOKEN_QUANTITIES = {
    "received": ("attention received (alpha)", ("mean attention each token receives as a key from the query rows "
                                                "that see it (Gu et al.'s alpha)")),
    "entropy": ("attention entropy of the row (nats)", "entropy of each token's query row"),
    "probability": ("p(token | before)", ("the model's probability of each token given the tokens before it "
                                          "(from the row that predicted it)")),
}


def token_curve(trace, quantity: str, *, layer: int | None = None, head: int | None = None,
                stack: str = "text") -> np.ndarray:
    """[position] one per-token quantity of TOKEN_QUANTITIES, from the statistics: for one head, the mean over
    heads of one layer (head None), or the mean over every layer and head (layer None). NaN where undefined."""
    n = len(trace.tokens)
    if quantity == "probability":
        if not trace.has("outputs.next_token_logprob"):
            return np.full(n, np.nan)
        logprob = trace.tensor("outputs.next_token_logprob").double().numpy()
        out = np.full(n, np.nan)
        out[1:] = np.exp(logprob[definitions.predicting_row(1):definitions.predicting_row(n)])
        return out
    if quantity not in TOKEN_QUANTITIES:
        raise ValueError(f"unknown token quantity {quantity!r}")
    layers = range(trace.n_layers(stack)) if layer is None else [layer]
    total = np.zeros(n)
    for index in layers:
        if quantity == "received":
            values = definitions.alpha(stat(trace, stack, index, "key_mass"),
                                       stat(trace, stack, index, "key_count")).numpy()
        else:
            values = stat(trace, stack, index, "entropy").double().numpy()
        total += values[head] if head is not None else values.mean(0)
    return total / len(layers)


def paired(curve_a: np.ndarray, curve_b: np.ndarray, pairs: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(A values, B values, B - A) at the aligned position pairs."""
    a, b = np.asarray(curve_a)[pairs[:, 0]], np.asarray(curve_b)[pairs[:, 1]]
    return a, b, b - a


# -- attention maps ---------------------------------------------------------------------------------
def map_difference(map_a: torch.Tensor, map_b: torch.Tensor) -> torch.Tensor:
    """B - A of two [query_pos, key_pos] maps of the same shape (float32)."""
    if tuple(map_a.shape) != tuple(map_b.shape):
        raise ValueError(f"maps of shapes {tuple(map_a.shape)} and {tuple(map_b.shape)} do not subtract")
    return map_b.float() - map_a.float()


def signed_window(full: torch.Tensor, q_range=None, k_range=None, *, max_cells: int = 400) -> Window:
    """`maps.window` for a signed map (a difference): each block keeps its value of largest magnitude."""
    return window(full, q_range, k_range, max_cells=max_cells, signed=True)
