"""The nnsight backend against HF capture and HF eager maps; NDIF's remote path (simulated) and fail-fast."""

from __future__ import annotations

import time
import warnings

import pytest
import torch
from PIL import Image

import workbench
from tests.workbench.capture.backends.conftest import assert_same_trace
from tests.helpers import assert_close, eager_forward, statistics_from_maps
from workbench.errors import InputError, WorkbenchError
from workbench.capture import Tracer
from workbench.capture.backends.ndif import RemoteUnavailableError, ndif_preflight

nnsight = pytest.importorskip("nnsight")
# nnsight's deprecated-class notices, and its note that BERT's `output` submodule is served as `E_output`.
pytestmark = [pytest.mark.filterwarnings("ignore::FutureWarning"), pytest.mark.filterwarnings("ignore::UserWarning")]

PROMPT = "The red square is next to the"
FULL = dict(maps="all", map_dtype="float32", hidden_states=True, head_outputs="all")


@pytest.mark.parametrize("name,new_tokens", [("tiny-gpt2", 3), ("tiny-llama", 3), ("tiny-bert", 0)])
def test_nnsight_equals_hf_capture_and_eager(models, name, new_tokens):
    loaded = models(name)
    options = dict(max_new_tokens=new_tokens, **FULL)
    expected = workbench.trace(loaded, PROMPT, **options)
    actual = Tracer.open(nnsight.NNsight(loaded.model), backend="nnsight", tokenizer=loaded.tokenizer).trace(PROMPT, **options)
    assert actual.model["attention_backend"] == "nnsight" and actual.model["frontend"]["wrapper"] == "NNsight"
    assert_same_trace(actual, expected)
    # Independent of both captures: HF eager maps over the final sequence.
    ids = torch.tensor([[t.id for t in actual.tokens]])
    for layer, maps in enumerate(eager_forward(loaded.model, input_ids=ids).attentions):
        stats = actual.layer(layer)
        assert_close(stats["maps"], maps[0], what=f"layer {layer} maps")
        for stat, value in statistics_from_maps(maps[0], actual.regions, causal=loaded.kind != "encoder").items():
            assert_close(stats[stat], value, what=f"layer {layer} {stat}")


def test_remote_path_simulated_locally_equals_hf_capture(models):
    """nnsight's remote="local" serialises the block as for NDIF, deserialises it and runs it here."""
    loaded = models("tiny-llama")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        wrapped = nnsight.LanguageModel(loaded.model, tokenizer=loaded.tokenizer)
    options = dict(max_new_tokens=2, hidden_states=True)
    tracer = Tracer.open(wrapped, backend="nnsight", remote="local")
    actual = tracer.trace(PROMPT, **options)
    assert actual.model["frontend"]["remote"] == "local"
    assert_same_trace(actual, workbench.trace(loaded, PROMPT, **options))
    with pytest.raises(InputError, match="head-outputs"):
        tracer.trace(PROMPT, head_outputs="all")


def test_vision_language_model(models, tmp_path):
    loaded = models("tiny-llava")
    loaded.model.save_pretrained(tmp_path / "llava")
    loaded.processor.save_pretrained(tmp_path / "llava")
    image = tmp_path / "scene.png"
    Image.new("RGB", (48, 40), (200, 30, 30)).save(image)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        wrapped = nnsight.VisionLanguageModel(str(tmp_path / "llava"), dispatch=True)
    options = dict(max_new_tokens=2, maps="all", vision_maps="all", map_dtype="float32")
    actual = Tracer.open(wrapped, backend="nnsight").trace("What is in the picture?", image=image, **options)
    assert sorted(actual.stacks) == ["text", "vision"]
    assert sum(t.region == "image" for t in actual.tokens) == 16
    assert_same_trace(actual, workbench.trace(loaded, "What is in the picture?", image=image, **options))


def test_remote_without_key_fails_at_once(monkeypatch):
    monkeypatch.delenv("NDIF_API_KEY", raising=False)
    monkeypatch.setenv("NNSIGHT_CONFIG", "/nonexistent/nnsight.yaml")  # no user file that could hold a key
    started = time.monotonic()
    with pytest.raises(RemoteUnavailableError, match="needs an API key: set NDIF_API_KEY"):
        Tracer.open("llama-3.1-8b", backend="nnsight", remote=True)
    assert time.monotonic() - started < 1.0


@pytest.mark.parametrize("host", ["http://127.0.0.1:9", "https://ndif.invalid", "http://10.255.255.1:81"])
def test_remote_without_network_fails_at_once(monkeypatch, host):
    monkeypatch.setenv("NDIF_API_KEY", "test-key")
    monkeypatch.setenv("NDIF_HOST", host)
    started = time.monotonic()
    with pytest.raises(RemoteUnavailableError, match="cannot reach NDIF") as caught:
        ndif_preflight(timeout=1.0)
    assert time.monotonic() - started < 3.0
    assert "\n" not in str(caught.value)


def test_dispatcher_user_errors(models):
    with pytest.raises(WorkbenchError, match="unknown backend 'jax'"):
        Tracer.open(models("tiny-gpt2"), backend="jax")
    with pytest.raises(WorkbenchError, match="needs --backend nnsight"):
        Tracer.open(models("tiny-gpt2"), backend="lens", remote=True)
