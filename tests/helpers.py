"""Independent reference computations the tests compare the workbench against."""

from __future__ import annotations

import torch

from workbench.traces.tokens import REGIONS


def eager_forward(model, **inputs):
    """Run `model` with HF's eager attention and output_attentions=True (the reference maps)."""
    previous = model.config._attn_implementation
    model.set_attn_implementation("eager")
    try:
        with torch.no_grad():
            return model(**inputs, output_attentions=True, output_hidden_states=True)
    finally:
        model.set_attn_implementation(previous)


def statistics_from_maps(maps: torch.Tensor, regions: torch.Tensor, *, causal: bool,
                         visible: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
    """Statistics computed directly from dense reference maps [head, query_pos, key_pos] (fp32).

    visible: [query_pos, key_pos] bool, which keys each query may see (for the counts); default: causal or all.
    """
    n = maps.shape[-1]
    maps = maps.double()
    if visible is None:
        visible = torch.tril(torch.ones(n, n, dtype=torch.bool)) if causal else torch.ones(n, n, dtype=torch.bool)
    one_hot = torch.nn.functional.one_hot(regions, len(REGIONS)).double()
    plogp = torch.where(maps > 0, maps * maps.clamp_min(1e-300).log(), torch.zeros_like(maps))
    return {
        "key_mass": maps.sum(1),
        "key_count": visible.sum(0),
        "region_mass": maps @ one_hot,
        "region_count": visible.double() @ one_hot,
        "entropy": -plogp.sum(-1),
        "normaliser": maps.sum(-1),
    }


def assert_close(actual: torch.Tensor, expected: torch.Tensor, atol: float = 1e-5, rtol: float = 1e-5,
                 what: str = "") -> None:
    """|actual - expected| <= atol + rtol * |expected| everywhere (sums of many probabilities need the rtol)."""
    actual, expected = actual.double(), expected.double()
    assert actual.shape == expected.shape, f"{what}: shape {tuple(actual.shape)} != {tuple(expected.shape)}"
    if not actual.numel():
        return
    excess = ((actual - expected).abs() - (atol + rtol * expected.abs())).max().item()
    error = (actual - expected).abs().max().item()
    assert excess <= 0, f"{what}: max abs error {error:.3g} exceeds {atol} + {rtol} * |expected|"


def close_rows(got: list[dict], expected: list[dict], tolerance: float = 1e-5) -> bool:
    """Table rows equal, floats within `tolerance` (absolute and relative): sweeps trace the inputs of a call in
    padded batches, which move the numbers at fp32 rounding level against other batch sizes."""
    assert len(got) == len(expected), f"{len(got)} rows != {len(expected)}"
    for a, b in zip(got, expected, strict=True):
        assert a.keys() == b.keys(), f"columns {sorted(a)} != {sorted(b)}"
        for key, value in b.items():
            if isinstance(value, float) and isinstance(a[key], float):
                assert abs(a[key] - value) <= tolerance * (1 + abs(value)), (key, a[key], value)
            else:
                assert a[key] == value, (key, a[key], value)
    return True


def eager_head_outputs(model, layers, heads: int, **inputs):
    """[layer, head, d_model] at the last row of each given self-attention layer, from an eager forward of `model`:
    each o_proj input split per head times its slice of W_O (an independent reading of what VHD compares)."""
    import torch

    captured = {}
    handles = [layer.self_attn.o_proj.register_forward_pre_hook(
        lambda module, args, index=index: captured.__setitem__(index, args[0][0, -1].detach()))
        for index, layer in enumerate(layers)]
    previous = model.config._attn_implementation
    model.set_attn_implementation("eager")
    try:
        with torch.no_grad():
            model(**inputs)
    finally:
        model.set_attn_implementation(previous)
        for handle in handles:
            handle.remove()
    out = []
    for index, layer in enumerate(layers):
        weight = layer.self_attn.o_proj.weight.detach()  # [d_model, head * d_head]
        per_head = captured[index].reshape(heads, -1)
        out.append(torch.einsum("hd,mhd->hm", per_head, weight.reshape(weight.shape[0], heads, -1)))
    return torch.stack(out)


def held_out_sentence_answers(n_scenes: int):
    """(qa, answer word, sentence) for every short-answer question of the first `n_scenes` held-out scenes and
    every answer word of its type: the sentences smol-llava is trained on (data/models/smol_llava/examples.py
    writes them through scene_answers.sentence_answer), with planted answer words."""
    import dataclasses
    import random

    from workbench.datasets import scenes
    from workbench.datasets.scene_answers import sentence_answer

    for index in range(n_scenes):
        for qa in scenes.heldout_questions(scenes.heldout_scene(index), random.Random(index)):
            if qa.type != "caption":
                for word in scenes.ANSWER_WORDS[qa.type]:
                    yield qa, word, sentence_answer(dataclasses.replace(qa, answer=word))
