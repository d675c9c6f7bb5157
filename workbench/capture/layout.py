"""Where the attention layers of a transformers model are: stacks, layer indices, head counts, W_O.

A model has one "text" stack (the decoder or encoder layers) and, for vision-language models, a "vision"
stack (the vision tower). Layer lists are found by their length matching the config, so GPT-2 (`h`),
Llama (`layers`), BERT (`layer`) and CLIP (`layers`) need no per-family table. Mllama is the exception: its
language model interleaves cross-attention layers (text queries, image-feature keys) with its self-attention
layers in one list, so they form a third stack, "cross", and its tower runs a local then a global encoder, which
together are the "vision" stack (`_mllama_layout`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch

OUTPUT_PROJECTION_NAMES = (
    "self_attn.o_proj", "attn.c_proj", "attention.output.dense", "self_attn.out_proj", "attn.o_proj",
    "attention.o_proj", "self_attention.dense", "attn.out_proj", "cross_attn.o_proj",
)


@dataclass
class Stack:
    """One stack of attention layers."""

    name: str  # "text" | "vision" | "cross"
    prefix: str  # qualified name of the ModuleList
    layers: list  # the layer modules, in order
    n_heads: int
    n_kv_heads: int
    d_model: int
    # (positions a tile takes, of which the tile's [CLS] and patches: the rest pads) where a stack's positions are
    # tiles the recorder cannot size from its input alone (Mllama's padded tiles; the cross stack's keys)
    tiles: tuple[int, int] | None = None

    @property
    def n_layers(self) -> int:
        return len(self.layers)


@dataclass
class ModelLayout:
    """The stacks of a model, which module is where, and (for a backend that renames modules) where W_O is."""

    stacks: dict[str, Stack]
    module_names: dict[int, str] = field(default_factory=dict)  # id(module) -> qualified name
    projection: Callable[[str, int], torch.Tensor] | None = None  # (stack, layer) -> W_O, overrides the lookup
    places: dict[int, tuple[str, int]] = field(default_factory=dict)  # id(attention module) -> (stack, layer)

    def locate(self, module) -> tuple[str, int]:
        """(stack name, layer index) of an attention module seen at call time."""
        if id(module) in self.places:  # stacks whose layers are not one list's items (Mllama)
            return self.places[id(module)]
        name = self.module_names.get(id(module))
        if name is None:
            raise RuntimeError(f"attention module {type(module).__name__} is not part of the traced model")
        for stack in self.stacks.values():
            head = stack.prefix + "."
            if name.startswith(head):
                return stack.name, int(name[len(head):].split(".", 1)[0])
        raise RuntimeError(f"attention module {name} sits outside every known layer stack")

    def output_projection(self, stack: str, layer: int) -> torch.Tensor:
        """W_O of a layer as [d_model, head * d_head] (Conv1D weights transposed)."""
        if self.projection is not None:
            return self.projection(stack, layer)
        projection = self.output_projection_module(stack, layer)
        weight = projection.weight
        return weight.T if type(projection).__name__ == "Conv1D" else weight

    def output_projection_module(self, stack: str, layer: int) -> torch.nn.Module:
        """The attention output projection module of a layer (its output is the attention block's output)."""
        layer_module = self.stacks[stack].layers[layer]
        modules = dict(layer_module.named_modules())
        for name in OUTPUT_PROJECTION_NAMES:
            if modules.get(name) is not None:
                return modules[name]
        raise LookupError(f"no attention output projection found in {type(layer_module).__name__}")


def _counts(config) -> tuple[int, int, int, int]:
    n_heads = config.num_attention_heads
    n_kv_heads = getattr(config, "num_key_value_heads", None) or n_heads
    return config.num_hidden_layers, n_heads, n_kv_heads, config.hidden_size


def stack_shapes(config) -> dict[str, tuple[int, int, int, int]]:
    """{stack: (layers, heads, kv_heads, d_model)} of a model from its config alone (no weights needed)."""
    text_config = getattr(config, "text_config", None) or config
    vision_config = getattr(config, "vision_config", None)
    shapes = {"text": _counts(text_config)}
    if vision_config is not None:
        shapes["vision"] = _counts(vision_config)
    cross = getattr(text_config, "cross_attention_layers", None)
    if getattr(config, "model_type", "") == "mllama" and cross:
        layers, heads, kv_heads, d_model = shapes["text"]
        shapes["text"] = (layers - len(cross), heads, kv_heads, d_model)
        shapes["cross"] = (len(cross), heads, kv_heads, d_model)
        layers, heads, kv_heads, d_model = shapes["vision"]
        shapes["vision"] = (layers + vision_config.num_global_layers, heads, kv_heads, d_model)
    return shapes


def _mllama_layout(model) -> ModelLayout:
    """Mllama's stacks: "text" its self-attention layers, "cross" its cross-attention layers (each numbered in its
    own stack, in order), "vision" the local encoder's layers then the global encoder's."""
    shapes = stack_shapes(model.config)
    inner = model.model
    language, tower = inner.language_model, inner.vision_model
    cross_indices = set(language.config.cross_attention_layers)
    layers = {"text": [layer for index, layer in enumerate(language.layers) if index not in cross_indices],
              "cross": [layer for index, layer in enumerate(language.layers) if index in cross_indices],
              "vision": list(tower.transformer.layers) + list(tower.global_transformer.layers)}
    names = {id(module): name for name, module in model.named_modules()}
    vision = model.config.vision_config
    tile = 1 + (vision.image_size // vision.patch_size) ** 2  # [CLS] + patches; the tower pads to a multiple of 8
    tiles = {"vision": (tile + (8 - tile % 8) % 8, tile), "cross": (tile, tile)}
    stacks, places = {}, {}
    for stack, modules in layers.items():
        _, n_heads, n_kv_heads, d_model = shapes[stack]
        stacks[stack] = Stack(stack, names[id(modules[0])].rsplit(".", 1)[0], modules, n_heads, n_kv_heads, d_model,
                              tiles.get(stack))
        for index, layer_module in enumerate(modules):
            attention = getattr(layer_module, "cross_attn", None) or layer_module.self_attn
            places[id(attention)] = (stack, index)
    return ModelLayout(stacks, names, places=places)


def discover_layout(model) -> ModelLayout:
    if getattr(model.config, "model_type", "") == "mllama":
        return _mllama_layout(model)
    wanted = stack_shapes(model.config)
    stacks: dict[str, Stack] = {}
    for name, module in model.named_modules():
        if not isinstance(module, torch.nn.ModuleList) or not len(module):
            continue
        # A standalone vision encoder (CLIPVisionModel's vision_model...) has one stack: the trace's own, "text".
        tower = "vision" in wanted and ("vision" in name or "visual" in name)
        stack_name = "vision" if tower else "text"
        if stack_name not in wanted or stack_name in stacks:
            continue
        n_layers, n_heads, n_kv_heads, d_model = wanted[stack_name]
        if len(module) == n_layers and name.rsplit(".", 1)[-1] in ("layers", "h", "layer", "blocks"):
            stacks[stack_name] = Stack(stack_name, name, list(module), n_heads, n_kv_heads, d_model)
    if "text" not in stacks:
        raise RuntimeError(f"could not find the layer list of {type(model).__name__}")
    return ModelLayout(stacks, {id(module): name for name, module in model.named_modules()})
