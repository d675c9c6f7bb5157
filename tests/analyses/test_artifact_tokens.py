"""High-norm artifact tokens (Darcet et al. 2024) on a planted vision encoder: one patch's position embedding is
given a huge norm in the direction whose layer-0 key the [CLS] query of layer 0 matches, so that patch is an artifact
in every layer and takes [CLS]'s attention in layer 0 by construction. Norms and attention shares are checked against
HF eager hidden states and maps of the same model."""

from __future__ import annotations

import pytest
import torch
from PIL import Image

import workbench
from tests.helpers import assert_close, eager_forward
from workbench.analyses import sinks

PLANTED_PATCH = (1, 2)
NORM_SCALE = 50.0  # times the median patch norm


def _image():
    return Image.new("RGB", (48, 40), (30, 30, 30))


@pytest.fixture(scope="module")
def planted():
    """(a freshly built tiny-dinov2 with the plant, pixel values, planted position)."""
    loaded = workbench.load_model("tiny-dinov2")  # its own copy: the session's shared fixture stays clean
    model = loaded.model
    pixels = loaded.processor(images=_image(), return_tensors="pt")["pixel_values"]
    side = model.config.image_size // model.config.patch_size
    position = 1 + PLANTED_PATCH[0] * side + PLANTED_PATCH[1]
    clean = eager_forward(model, pixel_values=pixels)
    layer0 = model.encoder.layer[0]
    with torch.no_grad():  # the direction whose layer-0 key best matches [CLS]'s layer-0 query
        query = layer0.attention.q_proj(layer0.norm1(clean.hidden_states[0][0, 0]))
        direction = layer0.norm1.weight * (layer0.attention.k_proj.weight.T @ query)
        direction = direction - direction.mean()
        size = NORM_SCALE * float(clean.hidden_states[1][0, 1:].norm(dim=-1).median())
        model.embeddings.position_embeddings[0, position] += size * direction / direction.norm()
    return loaded, pixels, position


def test_planted_patch_is_the_only_artifact_and_takes_cls_attention(planted):
    loaded, pixels, position = planted
    trace = workbench.trace(loaded, None, image=_image(), hidden_states=True, maps="all", map_dtype="float32")
    reference = eager_forward(loaded.model, pixel_values=pixels)
    found = sinks.analyse(trace).artifacts
    assert found["available"] and [a["position"] for a in found["tokens"]] == [position]
    assert found["tokens"][0]["patch"] == list(PLANTED_PATCH) and found["first_layer"] == 0
    by_layer = {entry["layer"]: entry for entry in found["layers"]}
    patches = list(range(1, len(trace.tokens)))
    for layer in range(trace.n_layers()):
        entry = by_layer[layer]
        assert [a["position"] for a in entry["artifacts"]] == [position]
        norms = reference.hidden_states[layer + 1][0].norm(dim=-1)  # independent: HF's hidden states
        assert entry["artifacts"][0]["norm"] == pytest.approx(float(norms[position]), rel=1e-5)
        assert entry["median_patch_norm"] == pytest.approx(float(norms[patches].median()), rel=1e-4)
        maps = reference.attentions[layer][0]  # [head, query_pos, key_pos]
        assert entry["cls_share"] == pytest.approx(float(maps[:, 0, position].mean()), abs=1e-5)
        assert entry["patch_share"] == pytest.approx(float(maps[:, 1:, position].mean()), abs=1e-5)
        assert entry["all_share"] == pytest.approx(float(maps[:, :, position].mean()), abs=1e-5)
    assert by_layer[0]["cls_share"] > 0.5  # the planted key wins [CLS]'s attention
    result = sinks.SinksResult.from_json(sinks.analyse(trace).to_json())
    assert result.token_sets()["artifact_tokens"] == [position]


def test_unplanted_model_has_none_and_absolute_rule_and_missing_hidden(models, planted):
    loaded, _, position = planted
    image = _image()
    clean = workbench.trace(models("tiny-dinov2"), None, image=image, hidden_states=True)
    assert sinks.analyse(clean).artifacts["tokens"] == []
    trace = workbench.trace(loaded, None, image=image, hidden_states=True)
    planted_norm = sinks.analyse(trace).artifacts["tokens"][0]["norm"]
    above = sinks.analyse(trace, artifact_rule="absolute", artifact_threshold=planted_norm / 2).artifacts
    below = sinks.analyse(trace, artifact_rule="absolute", artifact_threshold=planted_norm * 2).artifacts
    assert [a["position"] for a in above["tokens"]] == [position] and below["tokens"] == []
    assert above["layers"][-1]["cls_share"] is None  # no maps kept: only the all-rows share
    bare = sinks.analyse(workbench.trace(loaded, None, image=image)).artifacts
    assert not bare["available"] and "--hidden" in bare["reason"]


def _photo(name: str):
    """A real photograph that ships with scikit-learn (china.jpg, flower.jpg)."""
    from pathlib import Path

    import sklearn.datasets

    return Path(sklearn.datasets.__file__).parent / "images" / name


@pytest.mark.slow
@pytest.mark.parametrize("photo", ["china.jpg", "flower.jpg"])
def test_real_dinov2_capture_and_artifacts_against_eager(models, photo):
    """dinov2-s (DINOv2 ViT-S/14, trained without registers) on a real photo: maps of every layer equal HF eager,
    and the artifact table equals the rule recomputed from HF's own hidden states and maps."""
    loaded = models("dinov2-s")
    image = Image.open(_photo(photo)).convert("RGB")
    trace = workbench.trace(loaded, None, image=image, maps="all", map_dtype="float32", hidden_states=True)
    pixels = loaded.processor(images=image, return_tensors="pt")["pixel_values"]
    reference = eager_forward(loaded.model, pixel_values=pixels)
    assert len(trace.tokens) == reference.last_hidden_state.shape[1] == 1 + 16 * 16
    for layer, eager_maps in enumerate(reference.attentions):
        # 1e-4, not the tiny fixtures' 1e-5: SDPA and eager round differently, the residual streams then differ by
        # ~1e-6 and a sharp layer (layer 3 here) turns that into ~2e-5 on its largest weights
        assert_close(trace.layer(layer)["maps"], eager_maps[0], atol=1e-4, rtol=1e-4, what=f"layer {layer} maps")
    found = sinks.analyse(trace).artifacts
    for entry in found["layers"]:
        norms = reference.hidden_states[entry["layer"] + 1][0].norm(dim=-1)
        ratio = norms[1:] / norms[1:].median()
        expected = (torch.nonzero(ratio > 4.0).flatten() + 1).tolist()
        assert [a["position"] for a in entry["artifacts"]] == expected, f"layer {entry['layer']}"
        top = int(ratio.argmax()) + 1
        assert entry["top"]["position"] == top and entry["top"]["ratio"] == pytest.approx(float(ratio.max()), abs=1e-3)
        maps = reference.attentions[entry["layer"]][0]
        assert entry["top"]["cls_share"] == pytest.approx(float(maps[:, 0, top].mean()), abs=1e-5)
