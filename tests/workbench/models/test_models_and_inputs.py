"""Model resolution (registry, local directories, hub ids) and input preparation (regions, patches)."""

from __future__ import annotations

import pytest
import torch
from PIL import Image

import workbench
from workbench.capture.plan import MapSelection
from workbench.errors import InputError, ModelNotFoundError, WeightsMissingError
from workbench.models.packaged import cache_dir


def test_local_directory_loads_like_the_fixture(models, tmp_path):
    fixture = models("tiny-llama")
    fixture.model.save_pretrained(tmp_path / "m")
    fixture.tokenizer.save_pretrained(tmp_path / "m")
    loaded = workbench.load_model(str(tmp_path / "m"))
    assert loaded.kind == "causal" and loaded.has_chat_template
    ids = torch.tensor([[5, 6, 7, 8]])
    with torch.no_grad():
        assert torch.equal(loaded.model(ids).logits, fixture.model(ids).logits)


def test_local_llava_directory_keeps_processor(models, tmp_path):
    fixture = models("tiny-llava")
    fixture.model.save_pretrained(tmp_path / "llava")
    fixture.processor.save_pretrained(tmp_path / "llava")
    loaded = workbench.load_model(str(tmp_path / "llava"))
    assert loaded.kind == "vlm" and loaded.processor is not None
    trace = workbench.trace(loaded, "What is this?", image=Image.new("RGB", (32, 32), "blue"), max_new_tokens=1)
    assert sum(t.region == "image" for t in trace.tokens) == 16


def test_resolution_errors(tmp_path):
    with pytest.raises(ModelNotFoundError, match="tiny-llama"):
        workbench.load_model("tiny-lama")
    with pytest.raises(WeightsMissingError, match="not on this machine"):
        workbench.load_model("some-org/some-model-that-is-not-cached")
    (tmp_path / "empty").mkdir()
    with pytest.raises(WeightsMissingError, match="config.json"):
        workbench.load_model(str(tmp_path / "empty"))
    with pytest.raises(ModelNotFoundError, match="dtype"):
        workbench.load_model("tiny-gpt2", dtype="float8")


@pytest.mark.slow
def test_smollm2_conversion_is_cached(models):
    models("smollm2")
    converted = cache_dir() / "models" / "smollm2-135m-instruct"
    assert (converted / "model.safetensors").stat().st_size > 400_000_000  # fp32, not the 90 MB GGUF
    assert "quantization_config" not in (converted / "config.json").read_text()


def test_regions_with_explicit_system(models):
    trace = workbench.trace(models("tiny-llama"), "Tell me", system="Be brief", max_new_tokens=2)
    by_region = {}
    for token in trace.tokens:
        by_region.setdefault(token.region, []).append(token.text)
    assert "".join(by_region["system"]) == "Be brief"
    assert "".join(by_region["prompt"]) == "Tell me"
    assert len(by_region["generated"]) == 2
    assert "".join(by_region["special"]).startswith("<|bos|><|im_start|>system")


def test_image_patch_positions_follow_the_grid(models):
    trace = workbench.trace(models("tiny-llava"), "Where?", image=Image.new("RGB", (64, 20), "red"))
    patches = [t.patch for t in trace.tokens if t.region == "image"]
    assert patches == [(r, c) for r in range(4) for c in range(4)]
    assert all(t.patch is None for t in trace.tokens if t.region != "image")
    # The statistics see the image as its own region.
    image_share = trace.layer(0)["region_mass"][:, -1, 2]
    assert (image_share > 0).all()


def test_vlm_without_image_is_text_only(models):
    trace = workbench.trace(models("tiny-llava"), "No picture today", max_new_tokens=1)
    assert not any(t.region == "image" for t in trace.tokens)
    assert "vision" not in trace.dims["stacks"]


def test_map_selection_parsing():
    assert MapSelection.parse("all") == MapSelection(None, None)
    assert MapSelection.parse("0-2,5:1") == MapSelection((0, 1, 2, 5), (1,))
    assert MapSelection.parse("3") == MapSelection((3,), None)
    with pytest.raises(InputError):
        MapSelection.parse("a-b:1")
    with pytest.raises(InputError, match="heads 0..5"):
        MapSelection.parse("0:9").head_list(6)


def test_generation_stops_at_eos(models):
    loaded = models("tiny-llama")
    trace = workbench.trace(loaded, "Hi", max_new_tokens=40)
    generated = [t.id for t in trace.tokens if t.region == "generated"]
    eos = loaded.tokenizer.eos_token_id
    assert eos not in generated[:-1]
    assert len(generated) == 40 or generated[-1] == eos
