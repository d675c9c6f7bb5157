"""A VLM's vision tower traced alone (workbench.models.towers): the artifact analysis of its norms against HF's own
hidden states of the tower on the VLM processor's pixels. The smol-llava test (slow) also checks the language
model's phi over the sink dimension against HF hidden states: no image token reaches VAR's tau = 20."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from PIL import Image

from workbench.analyses import sinks
from workbench.capture import Tracer
from workbench.errors import InputError
from workbench.models.towers import tower_encoder

SCENE = Path(__file__).resolve().parents[3] / "data" / "scenes" / "images" / "scene_0001.png"


def hf_tower_norms(vlm, image) -> list[torch.Tensor]:
    """[position] norms after each tower layer, from HF's output_hidden_states (index 0 is the embeddings)."""
    pixels = vlm.processor.image_processor(images=image, return_tensors="pt")["pixel_values"]
    with torch.no_grad():
        hidden = vlm.model.model.vision_tower(pixels, output_hidden_states=True).hidden_states
    return [layer[0].float().norm(dim=-1) for layer in hidden[1:]]


def assert_artifact_table_matches(result, norms: list[torch.Tensor]) -> None:
    layers = result.artifacts["layers"]
    assert [entry["layer"] for entry in layers] == list(range(len(norms)))
    for entry, norm in zip(layers, norms):
        patches = norm[1:]  # position 0 is [CLS]
        median = float(patches.median())
        assert entry["median_patch_norm"] == pytest.approx(median, rel=1e-4)
        assert entry["top"]["position"] == 1 + int(patches.argmax())
        assert entry["top"]["ratio"] == pytest.approx(float(patches.max()) / median, abs=2e-3)
        assert [a["position"] for a in entry["artifacts"]] == (1 + (patches > 4 * median).nonzero().flatten()).tolist()


def test_tiny_llava_tower_alone_matches_hf_hidden_states(models):
    vlm = models("tiny-llava")
    image = Image.open(SCENE).convert("RGB")
    trace = Tracer.open(tower_encoder(vlm)).trace("", image, hidden_states=True)
    assert trace.model["kind"] == "vision" and trace.tokens[0].text == "[CLS]"
    assert_artifact_table_matches(sinks.analyse(trace), hf_tower_norms(vlm, image))
    # the VLM's own trace has no tower residual stream: its vision-stack result says where the artifacts are
    in_vlm = sinks.analyse(Tracer.open(vlm).trace("What is this?", image, hidden_states=True), stack="vision")
    assert in_vlm.artifacts is None and any("tower_encoder" in note for note in in_vlm.notes)


def test_tower_of_a_text_model_is_refused(models):
    with pytest.raises(InputError, match="no LLaVA-style vision tower"):
        tower_encoder(models("tiny-gpt2"))


def hf_image_phi(vlm, trace, image, dim: int) -> torch.Tensor:
    """[layer, image token] VAR's phi over one dimension, |x_d| / RMS(x), from an eager HF forward of the traced
    token ids; hidden_states[l] is the residual entering layer l."""
    ids = torch.tensor([[token.id for token in trace.tokens if token.region != "generated"]])
    pixels = vlm.processor.image_processor(images=image, return_tensors="pt")["pixel_values"]
    previous = vlm.model.config._attn_implementation
    vlm.model.set_attn_implementation("eager")
    try:
        with torch.no_grad():
            hidden = vlm.model(input_ids=ids, pixel_values=pixels, output_hidden_states=True).hidden_states
    finally:
        vlm.model.set_attn_implementation(previous)
    image_rows = ids[0] == vlm.model.config.image_token_id
    stacked = torch.stack([layer[0, image_rows].float() for layer in hidden[:-1]])  # [layer, image token, d_model]
    return stacked[..., dim].abs() / stacked.pow(2).mean(-1).add(1e-6).sqrt()


@pytest.mark.slow
def test_smol_llava_image_phi_and_tower_norms_match_hf(models):
    vlm = models("smol-llava")
    image = Image.open(SCENE).convert("RGB")
    trace = Tracer.open(vlm).trace("Is there a red circle?", image, hidden_states=True, top_k=8)
    result = sinks.analyse(trace)
    assert result.sink_dims["dims"] == [507]  # SmolLM2's massive-activation dimension, found on token 0
    phi = hf_image_phi(vlm, trace, image, 507)
    assert result.visual_sinks["max_phi_image"] == pytest.approx(float(phi.max()), rel=1e-3)
    assert float(phi[2:].max()) < 20 and result.visual_sinks["visual"] == []  # close to tau, never above it
    tower = sinks.analyse(Tracer.open(tower_encoder(vlm)).trace("", image, hidden_states=True))
    assert_artifact_table_matches(tower, hf_tower_norms(vlm, image))
    assert tower.artifacts["tokens"] == []  # DINOv2 ViT-S at 84 px: no high-norm patch
