"""Tiny random-weight fixtures built from config in milliseconds (seeded, so every build is identical).

They exercise exactly the transformers code paths of the real families: GPT-2 (absolute positions, Conv1D),
Llama with GQA and RoPE (the SmolLM2 / LLaVA language model), BERT (bidirectional encoder), LLaVA
(CLIP vision tower + projector + Llama) and Gemma 3 (sliding-window layers with a sliding KV cache, 5 local :
1 global like Gemma 3 270M, one KV head). `tiny_qwen2_window` (Qwen2 with a sliding window in its upper
layers) and `tiny_llama4_chunked` (Llama 4 text with chunked-local layers) are further windowed families for
the tests, not registry names. A larger initialiser than HF's default keeps the attention maps
far from uniform, so map comparisons are meaningful.
"""

from __future__ import annotations

from workbench.models.byte_tokenizer import CHATML_TEMPLATE, byte_level_tokenizer
from workbench.models.loaded import LoadedModel

INIT_STD = 0.2
SEED = 0


def seeded(build):
    """build() under the fixtures' seed, without touching the caller's random state; in eval mode."""
    import torch

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(SEED)
        model = build()
    return model.eval()


def llama_config(tokenizer, **overrides):
    """The fixtures' 3-layer Llama config (6 query heads : 2 KV heads) over `tokenizer`, with `overrides`."""
    from transformers import LlamaConfig

    fields = dict(
        vocab_size=len(tokenizer), hidden_size=96, intermediate_size=128, num_hidden_layers=3,
        num_attention_heads=6, num_key_value_heads=2, max_position_embeddings=512,
        initializer_range=INIT_STD, bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id, tie_word_embeddings=False,
    )
    fields.update(overrides)
    return LlamaConfig(**fields)


def tiny_gpt2() -> LoadedModel:
    from transformers import GPT2Config, GPT2LMHeadModel

    tokenizer = byte_level_tokenizer()
    config = GPT2Config(
        vocab_size=len(tokenizer), n_positions=256, n_embd=64, n_layer=3, n_head=4,
        initializer_range=INIT_STD, bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
    )
    return LoadedModel("tiny-gpt2", seeded(lambda: GPT2LMHeadModel(config)), tokenizer, "causal", "tiny-gpt2")


def tiny_gpt2_biased() -> LoadedModel:
    """tiny-gpt2 with every norm gain, norm bias and projection bias moved away from 1 / 0 (seeded): the GPT-2
    shape on which conventions that fold or drop biases (circuit bases, routes' value bias) differ."""
    import torch

    loaded = tiny_gpt2()
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, parameter in loaded.model.named_parameters():
            if name.endswith("bias") or ".ln_" in name:
                parameter.add_(0.3 * torch.randn(parameter.shape, generator=generator))
    return loaded


def tiny_llama() -> LoadedModel:
    from transformers import LlamaForCausalLM

    tokenizer = byte_level_tokenizer(chat_template=CHATML_TEMPLATE)
    config = llama_config(tokenizer)
    return LoadedModel("tiny-llama", seeded(lambda: LlamaForCausalLM(config)), tokenizer, "causal", "tiny-llama")


def tiny_bert() -> LoadedModel:
    from transformers import BertConfig, BertModel

    tokenizer = byte_level_tokenizer(encoder_style=True)
    config = BertConfig(
        vocab_size=len(tokenizer), hidden_size=64, num_hidden_layers=3, num_attention_heads=4,
        intermediate_size=128, max_position_embeddings=256, initializer_range=INIT_STD,
        pad_token_id=tokenizer.pad_token_id,
    )
    return LoadedModel("tiny-bert", seeded(lambda: BertModel(config, add_pooling_layer=False)), tokenizer,
                       "encoder", "tiny-bert")


TINY_IMAGE_SIZE = 32
TINY_PATCH_SIZE = 8


def tiny_llava() -> LoadedModel:
    from transformers import CLIPVisionConfig, LlavaConfig, LlavaForConditionalGeneration, LlavaProcessor
    from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

    tokenizer = byte_level_tokenizer(chat_template=CHATML_TEMPLATE)
    vision = CLIPVisionConfig(
        hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        image_size=TINY_IMAGE_SIZE, patch_size=TINY_PATCH_SIZE, projection_dim=32, initializer_range=INIT_STD,
    )
    config = LlavaConfig(
        vision_config=vision, text_config=llama_config(tokenizer),
        image_token_id=tokenizer.convert_tokens_to_ids("<image>"), vision_feature_layer=-1,
        vision_feature_select_strategy="default", projector_hidden_act="gelu",
        image_seq_length=(TINY_IMAGE_SIZE // TINY_PATCH_SIZE) ** 2,
    )
    config.initializer_range = INIT_STD
    image_processor = CLIPImageProcessorPil(
        size={"shortest_edge": TINY_IMAGE_SIZE}, crop_size={"height": TINY_IMAGE_SIZE, "width": TINY_IMAGE_SIZE},
    )
    processor = LlavaProcessor(
        image_processor=image_processor, tokenizer=tokenizer, patch_size=TINY_PATCH_SIZE,
        vision_feature_select_strategy="default", chat_template=CHATML_TEMPLATE, num_additional_image_tokens=1,
    )
    model = seeded(lambda: LlavaForConditionalGeneration(config))
    return LoadedModel("tiny-llava", model, tokenizer, "vlm", "tiny-llava", processor=processor)


# Short enough that test prompts run below, at and past it; Gemma 3 270M's layers use 512.
TINY_SLIDING_WINDOW = 8


def tiny_gemma3() -> LoadedModel:
    """Gemma 3 text model: 6 layers (5 sliding-window, 1 full, as in Gemma 3 270M), 4 query heads : 1 KV head."""
    from transformers import Gemma3ForCausalLM, Gemma3TextConfig

    tokenizer = byte_level_tokenizer(chat_template=CHATML_TEMPLATE)
    config = Gemma3TextConfig(
        vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=6,
        num_attention_heads=4, num_key_value_heads=1, head_dim=16, query_pre_attn_scalar=16,
        max_position_embeddings=512, sliding_window=TINY_SLIDING_WINDOW, sliding_window_pattern=6,
        initializer_range=INIT_STD, bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    return LoadedModel("tiny-gemma3", seeded(lambda: Gemma3ForCausalLM(config)), tokenizer, "causal", "tiny-gemma3")


def tiny_qwen2_window() -> LoadedModel:
    """Qwen2 with GQA whose layers 1 and 2 use a sliding window (layer 0 attends to everything)."""
    from transformers import Qwen2Config, Qwen2ForCausalLM

    tokenizer = byte_level_tokenizer(chat_template=CHATML_TEMPLATE)
    config = Qwen2Config(
        vocab_size=len(tokenizer), hidden_size=96, intermediate_size=128, num_hidden_layers=3,
        num_attention_heads=6, num_key_value_heads=2, max_position_embeddings=512, use_sliding_window=True,
        sliding_window=TINY_SLIDING_WINDOW, max_window_layers=1, initializer_range=INIT_STD,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id, tie_word_embeddings=False,
    )
    return LoadedModel("tiny-qwen2-window", seeded(lambda: Qwen2ForCausalLM(config)), tokenizer, "causal",
                       "tiny-qwen2-window")


def tiny_llama4_chunked() -> LoadedModel:
    """Llama 4 text model: layers 0-2 chunked-local (a query sees the earlier keys of its own chunk of
    TINY_SLIDING_WINDOW), layer 3 global without RoPE; GQA; a 2-expert MoE in every other layer."""
    from transformers import Llama4ForCausalLM, Llama4TextConfig

    tokenizer = byte_level_tokenizer(chat_template=CHATML_TEMPLATE)
    config = Llama4TextConfig(
        vocab_size=len(tokenizer), hidden_size=64, intermediate_size=64, intermediate_size_mlp=128,
        num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=2, head_dim=16, num_local_experts=2,
        num_experts_per_tok=1, interleave_moe_layer_step=2, max_position_embeddings=512,
        attention_chunk_size=TINY_SLIDING_WINDOW, no_rope_layer_interval=4, initializer_range=INIT_STD,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id, tie_word_embeddings=False,
    )
    return LoadedModel("tiny-llama4-chunked", seeded(lambda: Llama4ForCausalLM(config)), tokenizer, "causal",
                       "tiny-llama4-chunked")


BUILDERS = {"tiny-gpt2": tiny_gpt2, "tiny-llama": tiny_llama, "tiny-bert": tiny_bert, "tiny-llava": tiny_llava,
            "tiny-gemma3": tiny_gemma3}


# Standalone vision encoders: a TINY_IMAGE_SIZE image in TINY_PATCH_SIZE patches (a 4 x 4 grid), offline
# PIL image processors. No tokenizer: the positions are [CLS], registers and patches.
TINY_REGISTERS = 2


def _pil_processor(module: str, name: str, **fields):
    import importlib

    size = {"height": TINY_IMAGE_SIZE, "width": TINY_IMAGE_SIZE}
    return getattr(importlib.import_module(module), name)(size=size, crop_size=size, **fields)


def _vision(name: str, model_class, config, processor) -> LoadedModel:
    return LoadedModel(name, seeded(lambda: model_class(config)), None, "vision", name, processor=processor)


def tiny_vit() -> LoadedModel:
    from transformers import ViTConfig, ViTModel

    config = ViTConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
                       image_size=TINY_IMAGE_SIZE, patch_size=TINY_PATCH_SIZE, initializer_range=INIT_STD)
    processor = _pil_processor("transformers.models.vit.image_processing_pil_vit", "ViTImageProcessorPil")
    return _vision("tiny-vit", lambda c: ViTModel(c, add_pooling_layer=False), config, processor)


def _dinov2_processor():
    # DINOv2 ships a BiT processor (resize the short side, centre crop, ImageNet mean / std).
    return _pil_processor("transformers.models.bit.image_processing_pil_bit", "BitImageProcessorPil",
                          do_center_crop=True, image_mean=[0.485, 0.456, 0.406], image_std=[0.229, 0.224, 0.225])


def tiny_dinov2() -> LoadedModel:
    from transformers import Dinov2Config, Dinov2Model

    config = Dinov2Config(hidden_size=32, num_hidden_layers=3, num_attention_heads=4, mlp_ratio=2,
                          image_size=TINY_IMAGE_SIZE, patch_size=TINY_PATCH_SIZE, initializer_range=INIT_STD)
    return _vision("tiny-dinov2", Dinov2Model, config, _dinov2_processor())


def tiny_dinov2_registers() -> LoadedModel:
    from transformers import Dinov2WithRegistersConfig, Dinov2WithRegistersModel

    config = Dinov2WithRegistersConfig(
        hidden_size=32, num_hidden_layers=3, num_attention_heads=4, mlp_ratio=2, image_size=TINY_IMAGE_SIZE,
        patch_size=TINY_PATCH_SIZE, num_register_tokens=TINY_REGISTERS, initializer_range=INIT_STD)
    return _vision("tiny-dinov2-reg", Dinov2WithRegistersModel, config, _dinov2_processor())


def tiny_clip_vision() -> LoadedModel:
    from transformers import CLIPVisionConfig, CLIPVisionModel

    config = CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                              image_size=TINY_IMAGE_SIZE, patch_size=TINY_PATCH_SIZE, initializer_range=INIT_STD)
    processor = _pil_processor("transformers.models.clip.image_processing_pil_clip", "CLIPImageProcessorPil")
    return _vision("tiny-clip-vision", CLIPVisionModel, config, processor)


def tiny_siglip_vision() -> LoadedModel:
    """SigLIP has no [CLS]: every position is a patch (its pooling head is not an attention layer of the stack)."""
    from transformers import SiglipVisionConfig, SiglipVisionModel

    config = SiglipVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                                image_size=TINY_IMAGE_SIZE, patch_size=TINY_PATCH_SIZE)
    config.initializer_range = INIT_STD
    processor = _pil_processor("transformers.models.siglip.image_processing_pil_siglip", "SiglipImageProcessorPil")
    return _vision("tiny-siglip-vision", SiglipVisionModel, config, processor)


BUILDERS.update({"tiny-vit": tiny_vit, "tiny-dinov2": tiny_dinov2, "tiny-dinov2-reg": tiny_dinov2_registers,
                 "tiny-clip-vision": tiny_clip_vision, "tiny-siglip-vision": tiny_siglip_vision})
