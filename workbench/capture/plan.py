"""What a capture records beyond the always-on statistics: maps, hidden states, per-head outputs."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from workbench.errors import InputError


@dataclass(frozen=True)
class MapSelection:
    """Layers and heads whose full maps are kept (None = all)."""

    layers: tuple[int, ...] | None = None
    heads: tuple[int, ...] | None = None

    def wants(self, layer: int) -> bool:
        return self.layers is None or layer in self.layers

    def head_list(self, n_heads: int) -> list[int]:
        heads = list(range(n_heads)) if self.heads is None else list(self.heads)
        bad = [h for h in heads if not 0 <= h < n_heads]
        if bad:
            raise InputError(f"--maps asks for heads {bad}, but layers have heads 0..{n_heads - 1}")
        return heads

    @classmethod
    def parse(cls, text: str) -> "MapSelection":
        """'LAYERS:HEADS' with each side 'all', '3', '0,2,5' or '0-4' (e.g. 'all:0', '10-12:all', '5')."""
        layers_text, _, heads_text = text.partition(":")
        return cls(_parse_indices(layers_text, "layers", text), _parse_indices(heads_text or "all", "heads", text))


def _parse_indices(text: str, what: str, whole: str) -> tuple[int, ...] | None:
    text = text.strip()
    if text in ("all", "*", ""):
        return None
    indices: list[int] = []
    try:
        for part in text.split(","):
            start, dash, end = part.partition("-")
            indices.extend(range(int(start), int(end) + 1) if dash else [int(start)])
    except ValueError:
        raise InputError(
            f"cannot read the {what} in --maps {whole!r}; write LAYERS:HEADS like 'all:0', '0-3:all' or '5:1,2'"
        ) from None
    return tuple(sorted(set(indices)))


HeadOutputPositions = Literal["all", "generated", "last"]


@dataclass(frozen=True)
class CapturePlan:
    """Options of one capture.

    maps: stack name ("text", "vision") -> MapSelection; stacks absent keep no maps.
    hidden_states: keep the residual stream entering every layer (text stack), [query_pos, d_model].
    head_outputs: positions at which each head's contribution through its slice of W_O is kept:
        "all", "generated", "last", an explicit tuple of positions, or None.
    top_k: also keep the k most attended keys of every query row (0 = off).
    decomposition: keep what splits the residual stream into parts (information-flow routes, circuit
        tracing): per text layer the post-RoPE query (times the softmax scaling), key and value, the
        residual after attention, W_O and its bias; the residual after the last layer; implies hidden_states.
    map_dtype: storage dtype of maps ("float16" default, "float32" for exact comparisons).
    implementation: kernels implementation for the statistics ("auto", "dense", ...).
    """

    maps: dict[str, MapSelection] = field(default_factory=dict)
    hidden_states: bool = False
    head_outputs: HeadOutputPositions | tuple[int, ...] | None = None
    top_k: int = 0
    decomposition: bool = False
    map_dtype: str = "float16"
    implementation: str = "auto"

    def to_json(self) -> dict:
        return {
            "maps": {stack: {"layers": sel.layers, "heads": sel.heads} for stack, sel in self.maps.items()},
            "hidden_states": self.hidden_states,
            "head_outputs": self.head_outputs,
            "top_k": self.top_k,
            "decomposition": self.decomposition,
            "map_dtype": self.map_dtype,
            "implementation": self.implementation,
        }
