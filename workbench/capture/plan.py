"""`CapturePlan`: every capture option in one object, checked in full before the first forward.

The CLI, sweeps, the app and the Python API all build a plan with `CapturePlan.build(...)`, which checks
every value that does not depend on the model (kernel name, top-k, map dtype, head-output positions, the
map and memory specs) before any weights load. `plan.check(loaded, layout, positions=...)` then checks
what depends on the model (map layers and heads within its stacks, head-output positions within the input,
the memory the maps would need) before the first forward.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from workbench.capture.kernel_choice import check_kernel
from workbench.errors import InputError

HeadOutputPositions = Literal["all", "generated", "last"]
MAP_DTYPES = ("float16", "bfloat16", "float32")
MAX_INDEX = 65535  # no model has more layers or heads; bounds what a map spec can expand to
MAX_TOP_K = 4096
MAX_SPEC_LENGTH = 1000


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
            raise InputError(f"--maps asks for heads {_short(bad)}, but layers have heads 0..{n_heads - 1}")
        return heads

    def check(self, stack: str, n_layers: int, n_heads: int) -> None:
        """Refuse layers or heads the model's `stack` does not have."""
        flag = "--maps" if stack == "text" else "--vision-maps"
        bad = [layer for layer in (self.layers or ()) if layer >= n_layers]
        if bad:
            raise InputError(f"{flag} asks for layers {_short(bad)}, but the {stack} stack has layers 0..{n_layers - 1}")
        bad = [head for head in (self.heads or ()) if head >= n_heads]
        if bad:
            raise InputError(f"{flag} asks for heads {_short(bad)}, but the {stack} stack has heads 0..{n_heads - 1}")

    @classmethod
    def parse(cls, text: str) -> "MapSelection":
        """'LAYERS:HEADS' with each side 'all', '3', '0,2,5' or '0-4' (e.g. 'all:0', '10-12:all', '5')."""
        text = str(text)
        if len(text) > MAX_SPEC_LENGTH:
            raise InputError(f"--maps spec is {len(text)} characters long; write ranges like '0-3:all'")
        layers_text, _, heads_text = text.partition(":")
        return cls(_parse_indices(layers_text, "layers", text), _parse_indices(heads_text or "all", "heads", text))


def _short(values: list[int]) -> str:
    return str(values) if len(values) <= 6 else f"[{values[0]}, {values[1]}, ..., {values[-1]}] ({len(values)})"


def _parse_indices(text: str, what: str, whole: str) -> tuple[int, ...] | None:
    text = text.strip()
    if text in ("all", "*", ""):
        return None
    indices: set[int] = set()
    shown = whole if len(whole) <= 60 else whole[:57] + "..."
    try:
        for part in text.split(","):
            start, dash, end = part.partition("-")
            first, last = int(start), int(end) if dash else int(start)
            if not 0 <= first <= last <= MAX_INDEX:
                raise InputError(f"--maps {shown!r}: {what} {part.strip()!r} must be an index or a rising range "
                                 f"within 0..{MAX_INDEX}")
            indices.update(range(first, last + 1))
    except ValueError:
        raise InputError(
            f"cannot read the {what} in --maps {shown!r}; write LAYERS:HEADS like 'all:0', '0-3:all' or '5:1,2'"
        ) from None
    return tuple(sorted(indices))


def as_selection(maps) -> MapSelection | None:
    """A maps argument (None/False, True = all, a MapSelection or 'LAYERS:HEADS' text) as a MapSelection."""
    if maps is None or maps is False:
        return None
    if maps is True:
        return MapSelection()
    if isinstance(maps, MapSelection):
        return maps
    return MapSelection.parse(str(maps))


def parse_head_outputs(value) -> HeadOutputPositions | tuple[int, ...] | None:
    """'all', 'generated', 'last', positions '3,7,9' (or a sequence of ints), or None."""
    if value is None or value in ("all", "generated", "last"):
        return value
    if isinstance(value, str):
        if len(value) > MAX_SPEC_LENGTH:
            raise InputError(f"--head-outputs is {len(value)} characters long; pass 'all', 'generated' or 'last'")
        try:
            value = [int(part) for part in value.split(",")]
        except ValueError:
            raise InputError("--head-outputs takes 'all', 'generated', 'last' or positions like '3,7,9'") from None
    positions = tuple(sorted({int(p) for p in value}))
    if not positions or positions[0] < 0:
        raise InputError("--head-outputs positions must be 0 or more, e.g. '3,7,9'")
    return positions


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
    kernel: the statistics kernel asked for ("auto", "torch", "dense", "triton"; see kernel_choice.py).
    max_map_memory: budget for full maps ("2GB", bytes, "unlimited"; None: WORKBENCH_MAX_MAP_MEMORY or half
        the available RAM), see memory.py.
    """

    maps: dict[str, MapSelection] = field(default_factory=dict)
    hidden_states: bool = False
    head_outputs: HeadOutputPositions | tuple[int, ...] | None = None
    top_k: int = 0
    decomposition: bool = False
    map_dtype: str = "float16"
    kernel: str = "auto"
    max_map_memory: int | str | None = None

    @classmethod
    def build(cls, *, maps=None, vision_maps=None, hidden_states: bool = False, head_outputs=None, top_k: int = 0,
              decomposition: bool = False, map_dtype: str = "float16", kernel: str = "auto", max_map_memory=None,
              device: str = "cpu") -> "CapturePlan":
        """A plan from user-facing values, each checked (one-line InputError) before anything loads."""
        if isinstance(top_k, bool) or not isinstance(top_k, int) or not 0 <= top_k <= MAX_TOP_K:
            raise InputError(f"--top-k must be a whole number from 0 to {MAX_TOP_K}, not {str(top_k)[:20]}")
        if map_dtype not in MAP_DTYPES:
            raise InputError(f"unknown map dtype {str(map_dtype)[:20]!r}; use one of {', '.join(MAP_DTYPES)}")
        selections = {stack: selection for stack, selection in
                      (("text", as_selection(maps)), ("vision", as_selection(vision_maps))) if selection is not None}
        return cls(maps=selections, hidden_states=bool(hidden_states or decomposition),
                   head_outputs=parse_head_outputs(head_outputs), top_k=top_k, decomposition=bool(decomposition),
                   map_dtype=map_dtype, kernel=check_kernel(kernel, device=device),
                   max_map_memory=_checked_size(max_map_memory))

    def check_stacks(self, stacks: dict[str, tuple[int, int]], model_name: str) -> None:
        """Maps within the model's stacks ({stack: (layers, heads)}): from its config before it loads, or from
        its layout after."""
        for stack, selection in self.maps.items():
            if stack not in stacks:
                raise InputError(f"{model_name} has no {stack} stack; drop --{stack}-maps".replace("--text-", "--"))
            selection.check(stack, *stacks[stack])

    def check(self, loaded, layout, *, positions: int) -> None:
        """What depends on the model: maps within its stacks, head outputs within the input, map memory."""
        if self.decomposition and loaded.kind == "encoder":
            raise InputError(f"{loaded.name} is a post-norm encoder; the residual decomposition (routes, circuits) "
                             "supports pre-norm decoders (GPT-2, Llama, Mistral, Qwen2, LLaVA): drop --decomposition")
        self.check_stacks({name: (stack.n_layers, stack.n_heads) for name, stack in layout.stacks.items()},
                          loaded.name)
        if isinstance(self.head_outputs, tuple) and self.head_outputs[-1] >= positions:
            raise InputError(f"--head-outputs asks for position {self.head_outputs[-1]}, but the input has positions "
                             f"0..{positions - 1} (with the new tokens)")
        _check_map_memory(loaded, layout, self, positions)

    def to_json(self) -> dict:
        return {
            "maps": {stack: {"layers": sel.layers, "heads": sel.heads} for stack, sel in self.maps.items()},
            "hidden_states": self.hidden_states,
            "head_outputs": self.head_outputs,
            "top_k": self.top_k,
            "decomposition": self.decomposition,
            "map_dtype": self.map_dtype,
            "kernel": self.kernel,
        }


def _check_map_memory(loaded, layout, plan: CapturePlan, text_positions: int) -> None:
    from workbench.capture.memory import check_map_memory

    requests = []
    selections = dict(plan.maps)
    if "cross" in layout.stacks and "text" in selections:  # --maps keeps the cross-attention layers' maps too
        selections["cross"] = selections["text"]
    for stack, selection in selections.items():
        info = layout.stacks[stack]
        if stack == "text":
            positions = text_positions
        elif info.tiles is not None:  # Mllama: every tile the processor may cut, padded (tower) or not (cross keys)
            tiles = loaded.model.config.vision_config.max_num_tiles
            positions = (text_positions, tiles * info.tiles[1]) if stack == "cross" else tiles * info.tiles[0]
        else:  # a CLIP-style tower sees (image_size / patch_size)^2 patches plus [CLS] (per tile)
            vision = getattr(loaded.model.config, "vision_config", None)
            size, patch = getattr(vision, "image_size", 0), getattr(vision, "patch_size", 0)
            sides = [(s // p) for s, p in zip(*(v if isinstance(v, (list, tuple)) else (v, v) for v in (size, patch)))
                     ] if size and patch else []  # InternVL's config gives (height, width) pairs
            positions = sides[0] * sides[1] + 1 if sides else 0
        layers = sum(1 for layer in range(info.n_layers) if selection.wants(layer))
        requests.append((stack, layers, len(selection.head_list(info.n_heads)), positions))
    check_map_memory(requests, plan.map_dtype, plan.max_map_memory)


def _checked_size(max_map_memory):
    """The budget as given, once memory.parse_size has read it (a typo fails here, before anything loads)."""
    import os

    from workbench.capture.memory import ENV, parse_size

    if max_map_memory is not None:
        parse_size(max_map_memory)
    elif os.environ.get(ENV):
        try:
            parse_size(os.environ[ENV])
        except InputError as error:
            raise InputError(f"{ENV}: {error}") from None
    return max_map_memory
