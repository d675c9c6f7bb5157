"""The TransformerLens 4.x bridge backend against HF capture and against the bridge's own hook_pattern."""

from __future__ import annotations

import warnings

import pytest
import torch

import workbench
from tests.workbench.capture.backends.conftest import assert_same_trace
from tests.helpers import assert_close, statistics_from_maps
from workbench.errors import InputError
from workbench.capture import Tracer
from workbench.capture.backends.external import ExternalBackend
from workbench.capture.backends.lens import LensDriver

pytest.importorskip("transformer_lens")

PROMPT = "The red square is next to the"


@pytest.mark.parametrize("name", ["tiny-gpt2", "tiny-llama"])
def test_lens_equals_hf_capture_and_bridge_patterns(models, name):
    loaded = models(name)
    options = dict(max_new_tokens=3, maps="all", map_dtype="float32", hidden_states=True, head_outputs="all")
    expected = workbench.trace(loaded, PROMPT, **options)
    frontend = LensDriver(loaded)
    actual = Tracer(ExternalBackend(frontend)).trace(PROMPT, **options)
    assert actual.model["attention_backend"] == "transformer_lens"
    assert actual.model["frontend"]["q_hook"] == ("hook_rot_q" if name == "tiny-llama" else "hook_q")
    assert_same_trace(actual, expected)
    # Independent of the kernels: the bridge's own post-softmax patterns over the final sequence.
    ids = torch.tensor([[t.id for t in actual.tokens]])
    _, cache = frontend.bridge.run_with_cache(ids, names_filter=lambda hook: hook.endswith("attn.hook_pattern"))
    for layer in range(actual.n_layers()):
        pattern = cache[f"blocks.{layer}.attn.hook_pattern"][0]
        for stat, value in statistics_from_maps(pattern, actual.regions, causal=True).items():
            assert_close(actual.layer(layer)[stat], value, what=f"layer {layer} {stat}")
    # The LoadedModel handed in was copied, not rewired: HF capture on it still gives the same trace.
    assert_same_trace(workbench.trace(loaded, PROMPT, **options), expected, stats_tol=0, other_tol=0)


def test_user_built_bridge_from_a_local_directory(models, tmp_path):
    loaded = models("tiny-llama")
    loaded.model.save_pretrained(tmp_path / "model")
    loaded.tokenizer.save_pretrained(tmp_path / "model")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from transformer_lens.model_bridge import TransformerBridge

        bridge = TransformerBridge.boot_transformers(str(tmp_path / "model"))
    actual = Tracer.open(bridge, backend="lens").trace(PROMPT, max_new_tokens=2, head_outputs="last")
    assert_same_trace(actual, workbench.trace(loaded, PROMPT, max_new_tokens=2, head_outputs="last"))


def test_refusals(models):
    with pytest.raises(InputError, match="encoder"):
        LensDriver(models("tiny-bert"))
    with pytest.raises(InputError, match="vision-language"):
        LensDriver(models("tiny-llava"))
    with pytest.raises(InputError, match="text models"):
        Tracer.open(models("tiny-llama"), backend="lens").trace(PROMPT, image="x.png")
