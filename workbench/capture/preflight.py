"""What every capture checks before its first forward, HF capture and the front-ends alike (so a front-end
refuses exactly what `workbench.trace` refuses): the input length against the model's context, and the capture
plan with the memory its full maps would need (workbench/capture/memory.py)."""

from __future__ import annotations

import warnings

from workbench.capture.plan import CapturePlan, MapSelection
from workbench.errors import InputError
from workbench.models.loaded import LoadedModel


def check_lengths(loaded: LoadedModel, prompt_length: int, max_new_tokens: int, max_length: int | None) -> None:
    """Refuse inputs past the model's context (unless max_length allows it); warn past the trained length."""
    if max_new_tokens < 0:
        raise InputError("--max-new-tokens must be 0 or more")
    if max_new_tokens and loaded.kind == "encoder":
        raise InputError(f"{loaded.name} is an encoder and cannot generate; use --max-new-tokens 0")
    trained = loaded.extra.get("trained_positions") or loaded.max_positions
    if max_length and trained and max_length > trained and _learned_positions(loaded):
        raise InputError(f"{loaded.name} has learned absolute position embeddings for {trained} positions and "
                         "cannot run past them; shorten the input")
    limit = max(max_length or 0, loaded.max_positions or 0) or None
    total = prompt_length + max_new_tokens
    if limit is not None and total > limit:
        raise InputError(
            f"the input is {prompt_length} tokens + {max_new_tokens} new tokens, longer than {loaded.name}'s context "
            f"of {limit}; shorten the prompt, lower --max-new-tokens, or pass --max-length N to go past it on purpose"
        )
    if trained and total > trained:
        scaling = loaded.extra.get("rope_scaling")
        how = f"with {scaling['type']} RoPE scaling x{scaling['factor']:g}" if scaling else "without RoPE scaling"
        warnings.warn(f"{loaded.name} was trained on {trained} positions; this input has {total}, run {how}: "
                      "attention past the trained length is not what the model learned", UserWarning, stacklevel=3)


def as_selection(maps) -> MapSelection | None:
    """A maps argument (None/False, True = all, a MapSelection or 'LAYERS:HEADS' text) as a MapSelection."""
    if maps is None or maps is False:
        return None
    if maps is True:
        return MapSelection()
    if isinstance(maps, MapSelection):
        return maps
    return MapSelection.parse(str(maps))


def capture_plan(loaded: LoadedModel, layout, *, positions: int, maps=None, vision_maps=None,
                 hidden_states: bool = False, head_outputs=None, top_k: int = 0, map_dtype: str = "float16",
                 decomposition: bool = False, implementation: str = "auto", max_map_memory=None) -> CapturePlan:
    """The plan of what to record; refuses (ResourceError) full maps that would not fit the memory budget."""
    plan = CapturePlan(
        maps={stack: sel for stack, sel in (("text", as_selection(maps)), ("vision", as_selection(vision_maps)))
              if sel is not None},
        hidden_states=hidden_states or decomposition, head_outputs=head_outputs, top_k=top_k, map_dtype=map_dtype,
        decomposition=decomposition, implementation=implementation,
    )
    _check_map_memory(loaded, layout, plan, positions, max_map_memory)
    return plan


def _learned_positions(loaded: LoadedModel) -> bool:
    config = loaded.text_config
    return not (getattr(config, "rope_parameters", None) or getattr(config, "rope_theta", None))


def _check_map_memory(loaded, layout, plan: CapturePlan, text_positions: int, max_map_memory) -> None:
    from workbench.capture.memory import check_map_memory

    requests = []
    for stack, selection in plan.maps.items():
        info = layout.stacks.get(stack)
        if info is None:
            continue
        if stack == "text":
            positions = text_positions
        else:  # a CLIP-style tower sees (image_size / patch_size)^2 patches plus [CLS]
            vision = getattr(loaded.model.config, "vision_config", None)
            size, patch = getattr(vision, "image_size", 0), getattr(vision, "patch_size", 0)
            positions = (size // patch) ** 2 + 1 if size and patch else 0
        layers = sum(1 for layer in range(info.n_layers) if selection.wants(layer))
        requests.append((stack, layers, len(selection.head_list(info.n_heads)), positions))
    check_map_memory(requests, plan.map_dtype, max_map_memory)
