"""Reading single statistics and single-head slices from a Trace without loading whole layers.

`Trace.layer()` reads every tensor of a layer, maps included (hundreds of MB at 4k tokens), so the app
reads statistics one name at a time and map heads through safetensors' slice reader.
"""

from __future__ import annotations

import torch

from workbench.traces.names import stack_key_regions, tensor_name

__all__ = ["key_regions", "n_positions", "read_first_axis", "stat", "stored_map_heads", "tensor_name"]


def stat(trace, stack: str, layer: int, name: str) -> torch.Tensor | None:
    """One statistic of one layer (None when the bundle does not hold it)."""
    full = tensor_name(stack, layer, name)
    return trace.tensor(full) if trace.has(full) else None


def stored_map_heads(trace, stack: str, layer: int) -> list[int]:
    heads = stat(trace, stack, layer, "map_heads")
    return [] if heads is None else [int(h) for h in heads.tolist()]


def read_first_axis(trace, name: str, index: int) -> torch.Tensor:
    """tensor[index] of a trace tensor, reading only that slice from disk when the trace is a bundle."""
    return trace.tensor_slice(name, index)


def key_regions(trace, stack: str = "text") -> torch.Tensor:
    """[key_pos] region id of every position of a stack (the vision tower: [CLS] special, then image patches)."""
    if stack == "text":
        return trace.regions
    return stack_key_regions(trace.dims["stacks"][stack])  # Mllama: padded tiles, or the cross stack's keys


def n_positions(trace, stack: str = "text") -> int:
    return len(trace.tokens) if stack == "text" else int(trace.dims["stacks"][stack]["positions"])
