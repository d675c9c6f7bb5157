"""Standalone vision encoders (ViT, DINOv2 with and without registers, CLIP and SigLIP vision models) against HF
eager attention: maps and statistics of every layer, through the two-pass path (maps kept) and the one-pass
kernel (no maps); positions labelled [CLS] / register / patch with patch (row, col) from the pixel grid."""

from __future__ import annotations

import pytest
import torch
from PIL import Image

import workbench
from tests.helpers import assert_close, eager_forward, statistics_from_maps
from workbench.capture.vision_inputs import position_roles
from workbench.errors import InputError
from workbench.models.tiny import TINY_IMAGE_SIZE, TINY_PATCH_SIZE, TINY_REGISTERS
from workbench.traces.trace import load

# name -> ([CLS] count, register count), from how each family builds its sequence
VISION_MODELS = {"tiny-vit": (1, 0), "tiny-dinov2": (1, 0), "tiny-dinov2-reg": (1, TINY_REGISTERS),
                 "tiny-clip-vision": (1, 0), "tiny-siglip-vision": (0, 0)}


@pytest.fixture(scope="module")
def image():
    picture = Image.new("RGB", (48, 40), (30, 30, 30))
    for x in range(10, 30):
        for y in range(8, 20):
            picture.putpixel((x, y), (220, 40, 40))
    return picture


def _eager(loaded, image):
    pixels = loaded.processor(images=image, return_tensors="pt")["pixel_values"]
    return eager_forward(loaded.model, pixel_values=pixels)


@pytest.mark.parametrize("name", sorted(VISION_MODELS))
def test_positions_are_cls_registers_then_patches(models, image, name):
    loaded = models(name)
    trace = workbench.trace(loaded, None, image=image)
    n_cls, n_registers = VISION_MODELS[name]
    side = TINY_IMAGE_SIZE // TINY_PATCH_SIZE
    roles = position_roles(trace.tokens)
    assert roles["cls"] == list(range(n_cls))
    assert roles["register"] == list(range(n_cls, n_cls + n_registers))
    assert roles["patch"] == list(range(n_cls + n_registers, n_cls + n_registers + side * side))
    patches = [trace.tokens[p].patch for p in roles["patch"]]
    assert patches == [(row, col) for row in range(side) for col in range(side)]  # row-major, as the conv lays them
    assert _eager(loaded, image).last_hidden_state.shape[1] == len(trace.tokens)
    assert trace.meta["model"]["kind"] == "vision" and trace.meta["inputs"]["patch_grid"] == [side, side]


@pytest.mark.parametrize("name", sorted(VISION_MODELS))
def test_maps_and_statistics_equal_eager(models, image, name):
    loaded = models(name)
    kept = workbench.trace(loaded, None, image=image, maps="all", map_dtype="float32", hidden_states=True)
    fused = workbench.trace(loaded, None, image=image)  # no maps: the one-pass kernel computes the layer output
    assert set(kept.meta["capture"]["kernels_run"]["text"]) == {"torch"}
    assert set(fused.meta["capture"]["kernels_run"]["text"]) == {"one-pass"}
    reference = _eager(loaded, image)
    assert len(reference.attentions) == kept.n_layers()
    regions = kept.regions
    for layer, eager_maps in enumerate(reference.attentions):
        assert_close(kept.layer(layer)["maps"], eager_maps[0], what=f"{name} layer {layer} maps")
        expected = statistics_from_maps(eager_maps[0], regions, causal=False)
        for stat, value in expected.items():
            assert_close(kept.layer(layer)[stat], value, what=f"{name} layer {layer} {stat}")
            assert_close(fused.layer(layer)[stat], value, what=f"{name} layer {layer} {stat} (one-pass)")
        # the residual entering each layer, and after the last one, is HF's hidden state there
        assert_close(kept.layer(layer)["hidden_in"], reference.hidden_states[layer][0], what=f"{name} hidden {layer}")
    last = kept.n_layers() - 1
    assert_close(kept.tensor(f"layer_{last:02d}.hidden_out"), reference.hidden_states[-1][0], what="hidden_out")


def test_prompt_and_missing_image_are_refused(models, image):
    loaded = models("tiny-dinov2")
    with pytest.raises(InputError, match="takes an image only"):
        workbench.trace(loaded, "a red square", image=image)
    with pytest.raises(InputError, match="pass an image"):
        workbench.trace(loaded, None)
    with pytest.raises(InputError, match="cannot generate"):
        workbench.trace(loaded, None, image=image, max_new_tokens=2)


def test_bundle_round_trip_keeps_patches(models, image, tmp_path):
    trace = workbench.trace(models("tiny-dinov2-reg"), None, image=image)
    trace.save(tmp_path / "v.wbtrace")
    loaded = load(tmp_path / "v.wbtrace")
    assert [t.patch for t in loaded.tokens] == [t.patch for t in trace.tokens]
    assert position_roles(loaded.tokens) == position_roles(trace.tokens)
    assert torch.equal(loaded.layer(0)["key_mass"], trace.layer(0)["key_mass"])


def test_cli_traces_an_image_and_refuses_a_prompt_before_loading(image, tmp_path, monkeypatch):
    from tests.workbench.cli.cli_inprocess import run_cli

    path = tmp_path / "scene.png"
    image.save(path)
    code, _, err = run_cli("trace", "--model", "tiny-dinov2", "--image", path, "-o", tmp_path / "v.wbtrace", "--hidden")
    assert code == 0, err
    bundle = load(tmp_path / "v.wbtrace")
    assert bundle.meta["model"]["kind"] == "vision" and bundle.has("layer_02.hidden_out")
    code, _, err = run_cli("info", tmp_path / "v.wbtrace")
    assert code == 0 and "one-pass" in err + _

    def no_loading(*args, **kwargs):
        raise AssertionError("the model was loaded before the prompt was refused")

    monkeypatch.setattr("workbench.capture.tracer.Tracer.open", no_loading)
    code, _, err = run_cli("trace", "--model", "tiny-dinov2", "--image", path, "--prompt", "a red square")
    assert code == 2 and err.strip().startswith("error:") and len(err.strip().splitlines()) == 1
    assert "takes an image only" in err
    code, _, err = run_cli("trace", "--model", "tiny-dinov2")
    assert code == 2 and "--image" in err


def test_replay_recomputes_maps_from_the_image(models, image):
    from workbench.capture import Tracer

    tracer = Tracer.open(models("tiny-dinov2-reg"), copy_model=False)
    trace = tracer.trace(None, image)  # statistics only: the app's "from one query" view replays
    replayed = tracer.replay(trace, layers=[0, 2], image=image)
    reference = _eager(tracer.loaded, image)
    for layer, result in replayed.items():
        assert_close(result.maps, reference.attentions[layer][0], what=f"replayed layer {layer}")
    with pytest.raises(InputError, match="needs its input image"):
        tracer.replay(trace, layers=[0])


def test_a_saved_encoder_folder_traces_like_the_fixture(models, image, tmp_path, monkeypatch):
    """A user's own DINOv2 folder (save_pretrained of the model and its image processor) is a vision encoder too:
    its trace equals the fixture's, and a prompt is refused from the folder's config before any weights load."""
    from tests.workbench.cli.cli_inprocess import run_cli

    loaded = models("tiny-dinov2")
    folder = tmp_path / "my-dinov2"
    loaded.model.save_pretrained(folder)
    loaded.processor.save_pretrained(folder)
    path = tmp_path / "scene.png"
    image.save(path)
    code, _, err = run_cli("trace", "--model", folder, "--image", path, "-o", tmp_path / "v.wbtrace", "--maps", "all")
    assert code == 0, err
    from_folder = load(tmp_path / "v.wbtrace")
    fixture = workbench.trace(loaded, None, image=image, maps="all")
    assert from_folder.meta["model"]["kind"] == "vision"
    assert from_folder.n_layers() == fixture.n_layers()
    for layer in range(fixture.n_layers()):
        assert_close(from_folder.layer(layer)["maps"], fixture.layer(layer)["maps"], what=f"layer {layer} maps")

    def no_loading(*args, **kwargs):
        raise AssertionError("the model was loaded before the prompt was refused")

    monkeypatch.setattr("workbench.capture.tracer.Tracer.open", no_loading)
    code, _, err = run_cli("trace", "--model", folder, "--image", path, "--prompt", "a red square")
    assert code == 2 and "takes an image only" in err and len(err.strip().splitlines()) == 1
