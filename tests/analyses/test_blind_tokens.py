"""Blind (AVC) and outlier (DAMRO) image tokens: planted ground truth (planted-llava's sink patch; an outlier patch
planted in a tiny LLaVA's vision tower), the references' recipes on HF eager maps and on the raw q/k projections,
and the contrastive decoding (alpha 0 = plain greedy, the merged embeddings = the model's own input)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tests.helpers import eager_forward
from workbench.analyses.blind_tokens import BlindTokensResult, avc_layers, blind_tokens
from workbench.analyses.recalibration import generate
from workbench.capture import Tracer
from workbench.capture.generation import forward_inputs
from workbench.capture.inputs import prepare_input
from workbench.errors import InputError
from workbench.interventions.contrastive import AVC, DAMRO, combine, contrast_embeddings
from workbench.interventions.spec import DECODING, parse
from workbench.models.tiny import tiny_llava

IMAGE = "data/scenes/images/scene_0001.png"
PROMPT = "What is in the picture?"


def _position_of_patch(result, patch) -> int:
    return int(result.positions[list(result.patches).index(tuple(patch))])


def test_planted_sink_patch_is_the_blind_token(models):
    """planted-llava: head (2, 2) puts >= 0.9 of every text query's attention on the sink patch (1, 2) (its ground
    truth), so the last row's image attention in layer 2 piles on that one token: it is the only blind token."""
    result = blind_tokens(Tracer.open(models("planted-llava")), PROMPT, IMAGE)
    assert 2 in result.layers
    assert result.blind == (_position_of_patch(result, (1, 2)),)


def _planted_outlier_model(patch_index: int):
    """A tiny LLaVA whose last vision layer's [CLS] query reads one fixed direction e and whose keys are large along
    e only where the hidden state carries a planted direction u, added to one patch's position embedding."""
    loaded = tiny_llava()
    vision = loaded.model.model.vision_tower
    d = vision.config.hidden_size
    generator = torch.Generator().manual_seed(3)
    u = torch.randn(d, generator=generator)
    u = u - u.mean()
    u = u / u.norm()
    e = torch.randn(d, generator=generator)
    e = e / e.norm()
    with torch.no_grad():
        vision.embeddings.position_embedding.weight[1 + patch_index] += 60.0 * u  # position 0 is [CLS]
        attention = vision.encoder.layers[-1].self_attn
        attention.q_proj.weight.zero_()
        attention.q_proj.bias.copy_(4.0 * e)
        attention.k_proj.weight.copy_(4.0 * torch.outer(e, u))
        attention.k_proj.bias.zero_()
    return loaded


def test_planted_outlier_patch_tops_the_cls_attention():
    loaded = _planted_outlier_model(patch_index=5)
    result = blind_tokens(Tracer.open(loaded), PROMPT, IMAGE, top_k=3)
    assert result.outliers[0] == int(result.positions[5])
    assert result.cls_attention[5] > 0.5


def _reference_cls_row(loaded, forward) -> torch.Tensor:
    """DAMRO's recipe: hook the feature layer's q_proj / k_proj outputs, softmax(q_cls . K^T * C^-0.5)."""
    outputs = {}
    attention = loaded.model.model.vision_tower.encoder.layers[-1].self_attn
    hooks = [attention.q_proj.register_forward_hook(lambda m, a, o: outputs.setdefault("q", o)),
             attention.k_proj.register_forward_hook(lambda m, a, o: outputs.setdefault("k", o))]
    try:
        with torch.no_grad():
            loaded.model(**forward)
    finally:
        for hook in hooks:
            hook.remove()
    q, k = outputs["q"][0].double(), outputs["k"][0].double()
    return torch.softmax(q[0] @ k.T * q.shape[-1] ** -0.5, -1)


def test_tiny_llava_equals_the_references_on_eager_maps(models):
    loaded = models("tiny-llava")
    result = blind_tokens(Tracer.open(loaded), PROMPT, IMAGE, top_k=4)
    prepared = prepare_input(loaded, PROMPT, IMAGE)
    forward = forward_inputs(loaded, prepared.input_ids, prepared.model_inputs)
    image = torch.tensor(prepared.image_positions())
    maps = eager_forward(loaded.model, **forward).attentions  # language-model layers [1, head, query, key]
    rows = torch.stack([layer[0, :, -1, image].double().mean(0) for layer in maps])  # [layer, image token]
    assert np.allclose(result.layer_image_attention, rows.sum(1).numpy(), atol=1e-6)
    share = rows.sum(1) / rows.sum()
    order = share.argsort(descending=True)
    count = int((share[order].cumsum(0) < 0.5).sum()) + 1
    layers = sorted(order[:count].tolist())
    assert list(result.layers) == layers
    attention = rows[layers].mean(0)
    assert np.allclose(result.lm_attention, attention.numpy(), atol=1e-6)
    expected_blind = image[attention >= attention.mean() + 0.99 * attention.std()].tolist()
    assert list(result.blind) == expected_blind
    cls_row = _reference_cls_row(loaded, forward)[1:]
    assert np.allclose(result.cls_attention, cls_row.numpy(), atol=1e-6)
    assert list(result.outliers) == image[cls_row.argsort(descending=True)[:4]].tolist()


def test_layer_choice_follows_the_running_share():
    assert avc_layers(np.array([0.1, 0.6, 0.3]), 0.5) == [1]       # 0.6 alone reaches 0.5
    assert avc_layers(np.array([0.3, 0.4, 0.3]), 0.5) == [0, 1]    # 0.4 < 0.5, then 0.7
    assert avc_layers(np.array([0.25, 0.25, 0.25, 0.25]), 1.0) == [0, 1, 2, 3]


def test_combine_is_the_contrast_with_the_plausibility_cut():
    logits = torch.tensor([2.0, 1.0, -5.0])
    contrast = torch.tensor([3.0, 0.0, -9.0])
    out = combine(logits, contrast, alpha=1.0, beta=0.1)
    # p_i >= 0.1 p_max <=> logit_i >= log(0.1) + 2 = -0.30: token 2 is cut
    assert out.tolist()[:2] == [2 * 2.0 - 3.0, 2 * 1.0 - 0.0] and out[2] == float("-inf")


def test_contrast_embeddings_keep_all_equal_the_models_input(models):
    loaded = models("tiny-llava")
    prepared = prepare_input(loaded, PROMPT, IMAGE)
    forward = forward_inputs(loaded, prepared.input_ids, prepared.model_inputs)
    with torch.no_grad():
        expected = loaded.model(**forward).logits[0, -1]
        for remove in (False, True):
            embeds = contrast_embeddings(loaded, forward["input_ids"], forward, prepared.image_positions(),
                                         remove=remove)
            assert torch.allclose(loaded.model(inputs_embeds=embeds).logits[0, -1], expected, atol=1e-5)
        kept = prepared.image_positions()[:3]
        shorter = contrast_embeddings(loaded, forward["input_ids"], forward, kept, remove=True)
        assert shorter.shape[1] == forward["input_ids"].shape[1] - len(prepared.image_positions()) + 3
        zeroed = contrast_embeddings(loaded, forward["input_ids"], forward, kept, remove=False)
        dropped = [p for p in prepared.image_positions() if p not in kept]
        assert (zeroed[0, dropped] == 0).all() and (zeroed[0, kept] != 0).any()


def test_alpha_zero_decodes_the_plain_greedy_answer(models):
    tracer = Tracer.open(models("planted-llava"))
    plain = tracer.generate(PROMPT, IMAGE, max_new_tokens=4).token_ids
    for spec in (AVC(alpha=0.0), DAMRO(alpha=0.0, top_k=3)):
        assert generate(tracer, PROMPT, IMAGE, spec, max_new_tokens=4)["ids"] == plain


def test_specs_parse_and_refuse():
    assert parse("damro:top_k=4,alpha=0.5", kinds=DECODING) == DAMRO(top_k=4, alpha=0.5)
    assert parse("avc", kinds=DECODING) == AVC()
    for bad in ("avc:beta=0", "damro:top_k=0", "avc:layer_gamma=2", "act:beta=0.4", "avc:nope=1"):
        with pytest.raises(InputError):
            parse(bad, kinds=DECODING)
    with pytest.raises(InputError, match="workbench blind"):
        parse("avc")


def test_json_round_trip(models):
    result = blind_tokens(Tracer.open(models("planted-llava")), PROMPT, IMAGE)
    back = BlindTokensResult.from_json(result.to_json())
    assert back.blind == result.blind and back.outliers == result.outliers and back.patches == result.patches
    assert np.allclose(back.cls_attention, result.cls_attention) and back.token_sets() == result.token_sets()


def test_text_models_are_refused(models):
    with pytest.raises(InputError, match="vision-language"):
        blind_tokens(Tracer.open(models("tiny-llama")), PROMPT, IMAGE)
