"""Reading single statistics and single-head slices from a Trace without loading whole layers.

`Trace.layer()` reads every tensor of a layer, maps included (hundreds of MB at 4k tokens), so the app
reads statistics one name at a time and map heads through safetensors' slice reader.
"""

from __future__ import annotations

import torch

from workbench.errors import BundleError


def tensor_name(stack: str, layer: int, stat: str) -> str:
    return f"{'' if stack == 'text' else stack + '.'}layer_{layer:02d}.{stat}"


def stat(trace, stack: str, layer: int, name: str) -> torch.Tensor | None:
    """One statistic of one layer (None when the bundle does not hold it)."""
    full = tensor_name(stack, layer, name)
    return trace.tensor(full) if trace.has(full) else None


def stored_map_heads(trace, stack: str, layer: int) -> list[int]:
    heads = stat(trace, stack, layer, "map_heads")
    return [] if heads is None else [int(h) for h in heads.tolist()]


def read_first_axis(trace, name: str, index: int) -> torch.Tensor:
    """tensor[index] of a bundle tensor, reading only that slice from disk when the trace is a bundle.

    Uses the bundle's checked tensor index (file and key); in-memory traces just index the tensor.
    """
    tensors = getattr(trace, "_tensors", None)
    entry = getattr(tensors, "_index", {}).get(name) if tensors is not None else None
    root = getattr(tensors, "_root", None)
    if entry is None or root is None:
        return trace.tensor(name)[index]
    from safetensors import SafetensorError, safe_open

    file = root / entry["file"]
    shape = entry["shape"]
    if not 0 <= index < shape[0]:
        raise IndexError(f"{name}: index {index} outside [0, {shape[0]})")
    try:
        with safe_open(str(file), framework="pt") as shard:
            piece = shard.get_slice(entry["key"])
            if list(piece.get_shape()) != shape:
                raise BundleError(f"{file}: {entry['key']} has shape {piece.get_shape()} but the manifest says {shape}; "
                                  "the bundle is corrupt, trace again")
            return piece[index]
    except (SafetensorError, OSError, ValueError, RuntimeError) as error:
        raise BundleError(f"{file}: unreadable ({str(error).splitlines()[0]}); the bundle is corrupt, trace again") from None


def key_regions(trace, stack: str = "text") -> torch.Tensor:
    """[key_pos] region id of every position of a stack (the vision tower: [CLS] special, then image patches)."""
    from workbench.traces.tokens import REGIONS

    if stack == "text":
        return trace.regions
    n = trace.dims["stacks"][stack]["positions"]
    return torch.tensor([REGIONS.index("special")] + [REGIONS.index("image")] * (n - 1), dtype=torch.long)


def n_positions(trace, stack: str = "text") -> int:
    return len(trace.tokens) if stack == "text" else int(trace.dims["stacks"][stack]["positions"])
