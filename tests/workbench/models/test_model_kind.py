"""`model_kind`: the public classification of a config that loading and the capture backends share."""

from __future__ import annotations

import pytest
from workbench.models.loading import model_kind


@pytest.mark.parametrize("build, kind", [
    (lambda t: t.GPT2Config(architectures=["GPT2LMHeadModel"]), "causal"),
    (lambda t: t.LlamaConfig(architectures=["LlamaForCausalLM"]), "causal"),
    (lambda t: t.LlamaConfig(), "causal"),                       # no architectures: a decoder by default
    (lambda t: t.BertConfig(architectures=["BertModel"]), "encoder"),
    (lambda t: t.LlavaConfig(vision_config=t.CLIPVisionConfig(), text_config=t.LlamaConfig()), "vlm"),
])
def test_model_kind(build, kind):
    transformers = pytest.importorskip("transformers")
    assert model_kind(build(transformers)) == kind
