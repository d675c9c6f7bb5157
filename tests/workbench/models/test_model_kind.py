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
    (lambda t: t.Dinov2Config(), "vision"),
    (lambda t: t.CLIPVisionConfig(), "vision"),
    (lambda t: t.SiglipVisionConfig(), "vision"),
    (lambda t: t.ViTConfig(), "vision"),
])
def test_model_kind(build, kind):
    transformers = pytest.importorskip("transformers")
    assert model_kind(build(transformers)) == kind


@pytest.mark.parametrize("build, name", [
    (lambda t: t.T5Config(num_layers=1, d_model=32, num_heads=2, d_ff=64), "T5Config"),
    (lambda t: t.Wav2Vec2Config(num_hidden_layers=1, hidden_size=32, num_attention_heads=2), "Wav2Vec2Config"),
    (lambda t: t.CLIPConfig(), "CLIPConfig"),  # text and image towers together: give the vision tower alone
])
def test_unsupported_model_classes_are_one_line_before_any_weights(tmp_path, build, name):
    """A folder with only a config.json: without the check, transformers raises a raw ValueError (or we would
    report missing weights); with it, one line naming the class and the families the workbench traces."""
    transformers = pytest.importorskip("transformers")
    import workbench
    from workbench.errors import ModelNotFoundError

    build(transformers).save_pretrained(tmp_path)
    with pytest.raises(ModelNotFoundError) as raised:
        workbench.load_model(str(tmp_path))
    message = str(raised.value)
    assert name in message and "\n" not in message
    assert all(family in message for family in ("decoder language models", "encoders", "vision encoders",
                                                "vision-language"))


def test_supported_configs_pass_the_family_check():
    transformers = pytest.importorskip("transformers")
    from workbench.models.loading import check_supported

    for config in (transformers.GPT2Config(), transformers.LlamaConfig(), transformers.BertConfig(),
                   transformers.Qwen2Config(), transformers.LlavaConfig(vision_config=transformers.CLIPVisionConfig(),
                                                                        text_config=transformers.LlamaConfig())):
        check_supported(config, "here")
