"""Tiny seeded vision-language fixtures built from config, one per VLM family, each with an offline processor.

Every fixture pairs a 2-layer vision tower with a 3-layer language model and the family's own processor built
from local objects (the byte-level tokenizer plus the family's special tokens, a PIL image processor), so the
tests run the exact transformers code paths of the real checkpoints: LLaVA-NeXT and LLaVA-OneVision (anyres
tiles and image-newline tokens), Qwen2-VL / Qwen2.5-VL / Qwen3-VL (dynamic resolution, 2x2 merged patches,
M-RoPE), Idefics3 and SmolVLM (image splitting, pixel shuffle), Gemma 3 (pooled tokens, bidirectional image block),
PaliGemma (prefix-LM), InternVL (tiles plus a thumbnail) and Mllama (cross-attention layers over tile features).
Image sizes are kept small (16-64 pixels) so a build plus a traced forward takes well under a second.
"""

from __future__ import annotations

from workbench.models.byte_tokenizer import CHATML_TEMPLATE, byte_level_tokenizer
from workbench.models.loaded import LoadedModel
from workbench.models.tiny import INIT_STD, TINY_IMAGE_SIZE, TINY_PATCH_SIZE, llama_config, seeded

# (height, width) resolutions an anyres image may be tiled into: 1x2, 2x1 and 2x2 tiles of the base size.
ANYRES_PINPOINTS = [[TINY_IMAGE_SIZE, 2 * TINY_IMAGE_SIZE], [2 * TINY_IMAGE_SIZE, TINY_IMAGE_SIZE],
                    [2 * TINY_IMAGE_SIZE, 2 * TINY_IMAGE_SIZE]]
QWEN_PATCH_SIZE = 4  # a merged token covers 2x2 patches = 8x8 pixels
QWEN_MERGE = 2
QWEN_SPECIAL_TOKENS = ["<|vision_start|>", "<|vision_end|>", "<|image_pad|>", "<|video_pad|>"]


def _clip_vision():
    from transformers import CLIPVisionConfig

    return CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                            image_size=TINY_IMAGE_SIZE, patch_size=TINY_PATCH_SIZE, projection_dim=32,
                            initializer_range=INIT_STD)


def _siglip_vision(image_size=TINY_IMAGE_SIZE, patch_size=TINY_PATCH_SIZE):
    """A SigLIP tower without its pooling head: every position is a patch (no [CLS])."""
    from transformers import SiglipVisionConfig

    return SiglipVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                              image_size=image_size, patch_size=patch_size, vision_use_head=False)


def _with_tokens(tokens, template=CHATML_TEMPLATE, **special):
    """The byte-level tokenizer plus a family's extra special tokens (`special`: attribute name -> token)."""
    tokenizer = byte_level_tokenizer(chat_template=template)
    if tokens:
        tokenizer.add_special_tokens({"additional_special_tokens": tokens})
    for attribute, token in special.items():
        setattr(tokenizer, attribute, token)
    return tokenizer


def _image_only(processor_class):
    """`processor_class` without its video processor: transformers' video processors need torchvision, which this
    torch build does not ship; the fixtures trace images only."""

    class ImageOnly(processor_class):
        @classmethod
        def get_attributes(cls):
            return [name for name in super().get_attributes() if name != "video_processor"]

    ImageOnly.__name__ = ImageOnly.__qualname__ = processor_class.__name__
    return ImageOnly


def tiny_llava_next() -> LoadedModel:
    """LLaVA-NeXT: the base image plus up to 2x2 anyres tiles, an image-newline token after every feature row."""
    from transformers import LlavaNextConfig, LlavaNextForConditionalGeneration, LlavaNextProcessor
    from transformers.models.llava_next.image_processing_pil_llava_next import LlavaNextImageProcessorPil

    tokenizer = byte_level_tokenizer(chat_template=CHATML_TEMPLATE)
    config = LlavaNextConfig(
        vision_config=_clip_vision(), text_config=llama_config(tokenizer),
        image_token_id=tokenizer.convert_tokens_to_ids("<image>"), vision_feature_layer=-1,
        vision_feature_select_strategy="default", image_grid_pinpoints=ANYRES_PINPOINTS,
        image_seq_length=(TINY_IMAGE_SIZE // TINY_PATCH_SIZE) ** 2,
    )
    config.initializer_range = INIT_STD
    image_processor = LlavaNextImageProcessorPil(
        size={"shortest_edge": TINY_IMAGE_SIZE}, crop_size={"height": TINY_IMAGE_SIZE, "width": TINY_IMAGE_SIZE},
        image_grid_pinpoints=ANYRES_PINPOINTS,
    )
    processor = LlavaNextProcessor(
        image_processor=image_processor, tokenizer=tokenizer, patch_size=TINY_PATCH_SIZE,
        vision_feature_select_strategy="default", chat_template=CHATML_TEMPLATE, num_additional_image_tokens=1,
    )
    model = seeded(lambda: LlavaNextForConditionalGeneration(config))
    return LoadedModel("tiny-llava-next", model, tokenizer, "vlm", "tiny-llava-next", processor=processor)


def tiny_llava_onevision() -> LoadedModel:
    """LLaVA-OneVision: anyres tiles like LLaVA-NeXT over a SigLIP tower (no [CLS]: "full" features) and a Qwen2
    language model."""
    from transformers import (
        LlavaOnevisionConfig,
        LlavaOnevisionForConditionalGeneration,
        LlavaOnevisionProcessor,
        Qwen2Config,
    )
    from transformers.models.llava_onevision.image_processing_pil_llava_onevision import (
        LlavaOnevisionImageProcessorPil,
    )

    tokenizer = _with_tokens(["<video>"], video_token="<video>")
    text = Qwen2Config(**llama_config(tokenizer).to_dict() | {"model_type": "qwen2"})
    config = LlavaOnevisionConfig(
        vision_config=_siglip_vision(), text_config=text, image_token_index=tokenizer.convert_tokens_to_ids("<image>"),
        video_token_index=tokenizer.convert_tokens_to_ids("<video>"), vision_feature_layer=-1,
        vision_feature_select_strategy="full", image_grid_pinpoints=ANYRES_PINPOINTS,
    )
    config.initializer_range = INIT_STD
    image_processor = LlavaOnevisionImageProcessorPil(
        size={"height": TINY_IMAGE_SIZE, "width": TINY_IMAGE_SIZE}, image_grid_pinpoints=ANYRES_PINPOINTS,
    )
    processor = _image_only(LlavaOnevisionProcessor)(
        image_processor=image_processor, tokenizer=tokenizer, num_image_tokens=(TINY_IMAGE_SIZE // TINY_PATCH_SIZE) ** 2,
        vision_feature_select_strategy="full", chat_template=CHATML_TEMPLATE,
    )
    model = seeded(lambda: LlavaOnevisionForConditionalGeneration(config))
    return LoadedModel("tiny-llava-onevision", model, tokenizer, "vlm", "tiny-llava-onevision", processor=processor)


QWEN_TEMPLATE = CHATML_TEMPLATE.replace("'<image>\n'", "'<|vision_start|><|image_pad|><|vision_end|>'")


def _qwen_vl(name: str, family: str) -> LoadedModel:
    """Qwen2-VL ("qwen2_vl") or Qwen2.5-VL ("qwen2_5_vl"): 4-pixel patches merged 2x2 into one token, images
    resized to multiples of 8 pixels (dynamic resolution), M-RoPE over (temporal, height, width) in the LM."""
    import transformers
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    prefix = {"qwen2_vl": "Qwen2VL", "qwen2_5_vl": "Qwen2_5_VL", "qwen3_vl": "Qwen3VL"}[family]
    tokenizer = _with_tokens(QWEN_SPECIAL_TOKENS, QWEN_TEMPLATE, image_token="<|image_pad|>",
                             video_token="<|video_pad|>")
    ids = {token: tokenizer.convert_tokens_to_ids(token) for token in QWEN_SPECIAL_TOKENS}
    llama = llama_config(tokenizer)
    rope = {"rope_type": "default", "mrope_section": [2, 3, 3], "rope_theta": 10000.0}  # 2+3+3 = d_head / 2
    text = {"vocab_size": llama.vocab_size, "hidden_size": 96, "intermediate_size": 128, "num_hidden_layers": 3,
            "num_attention_heads": 6, "num_key_value_heads": 2, "max_position_embeddings": 512,
            "initializer_range": INIT_STD, "rope_parameters": rope, "bos_token_id": llama.bos_token_id,
            "eos_token_id": llama.eos_token_id, "pad_token_id": llama.pad_token_id}
    vision = {"depth": 2, "embed_dim": 32, "hidden_size": 96, "num_heads": 4, "patch_size": QWEN_PATCH_SIZE,
              "spatial_merge_size": QWEN_MERGE, "temporal_patch_size": 2, "initializer_range": INIT_STD}
    if family == "qwen2_5_vl":  # window attention over 16x16-pixel windows in layer 0, full attention in layer 1
        vision.update(intermediate_size=64, out_hidden_size=96, window_size=16, fullatt_block_indexes=[1])
    if family == "qwen3_vl":  # a learned 8x8 position table, layer 0's merged features added into the LM (deepstack)
        vision = {"depth": 2, "hidden_size": 32, "intermediate_size": 64, "num_heads": 4, "patch_size": QWEN_PATCH_SIZE,
                  "spatial_merge_size": QWEN_MERGE, "temporal_patch_size": 2, "out_hidden_size": 96,
                  "num_position_embeddings": 64, "deepstack_visual_indexes": [0], "initializer_range": INIT_STD}
        text.update(head_dim=16, rope_parameters={**rope, "mrope_interleaved": True})
    config = getattr(transformers, f"{prefix}Config")(
        text_config=text, vision_config=vision, image_token_id=ids["<|image_pad|>"],
        video_token_id=ids["<|video_pad|>"], vision_start_token_id=ids["<|vision_start|>"],
        vision_end_token_id=ids["<|vision_end|>"], tie_word_embeddings=False,
    )
    config.initializer_range = INIT_STD
    side = QWEN_PATCH_SIZE * QWEN_MERGE
    image_processor = Qwen2VLImageProcessorPil(
        patch_size=QWEN_PATCH_SIZE, merge_size=QWEN_MERGE, temporal_patch_size=2,
        size={"shortest_edge": 4 * side * side, "longest_edge": 64 * side * side},
    )
    processor = _image_only(getattr(transformers, f"{prefix}Processor"))(
        image_processor=image_processor, tokenizer=tokenizer, chat_template=QWEN_TEMPLATE)
    model = seeded(lambda: getattr(transformers, f"{prefix}ForConditionalGeneration")(config))
    return LoadedModel(name, model, tokenizer, "vlm", name, processor=processor)


def tiny_qwen2_vl() -> LoadedModel:
    return _qwen_vl("tiny-qwen2-vl", "qwen2_vl")


def tiny_qwen2_5_vl() -> LoadedModel:
    return _qwen_vl("tiny-qwen2.5-vl", "qwen2_5_vl")


def tiny_qwen3_vl() -> LoadedModel:
    return _qwen_vl("tiny-qwen3-vl", "qwen3_vl")


IDEFICS_SCALE = 2  # pixel shuffle: 2x2 patches -> one token
IDEFICS_TOKENS = ["<fake_token_around_image>", "<global-img>", "<end_of_utterance>"] + [
    f"<row_{row}_col_{col}>" for row in range(1, 7) for col in range(1, 7)]


def _idefics(name: str, family: str) -> LoadedModel:
    """Idefics3 ("idefics3") or SmolVLM ("smolvlm"): a SigLIP-style tower over 32-pixel tiles (4x4 patches, pixel
    shuffle 2 -> 2x2 tokens each); an image larger than one tile is split into tiles plus a global image."""
    import importlib

    import transformers

    prefix = {"idefics3": "Idefics3", "smolvlm": "SmolVLM"}[family]
    image_module = importlib.import_module(f"transformers.models.{family}.image_processing_pil_{family}")
    tokenizer = _with_tokens(IDEFICS_TOKENS)
    vision = getattr(transformers, f"{prefix}VisionConfig")(
        hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        image_size=TINY_IMAGE_SIZE, patch_size=TINY_PATCH_SIZE, initializer_range=INIT_STD)
    config = getattr(transformers, f"{prefix}Config")(
        vision_config=vision, text_config=llama_config(tokenizer), scale_factor=IDEFICS_SCALE,
        image_token_id=tokenizer.convert_tokens_to_ids("<image>"), tie_word_embeddings=False)
    config.initializer_range = INIT_STD
    image_processor = getattr(image_module, f"{prefix}ImageProcessorPil")(
        size={"longest_edge": 2 * TINY_IMAGE_SIZE}, max_image_size={"longest_edge": TINY_IMAGE_SIZE},
        do_image_splitting=True)
    seq_len = (TINY_IMAGE_SIZE // TINY_PATCH_SIZE) ** 2 // IDEFICS_SCALE ** 2
    videos = {"video_processor": None} if family == "smolvlm" else {}
    processor = _image_only(getattr(transformers, f"{prefix}Processor"))(
        image_processor=image_processor, tokenizer=tokenizer, image_seq_len=seq_len, chat_template=CHATML_TEMPLATE,
        **videos)
    if family == "smolvlm":  # its apply_chat_template reads the video sampling defaults even for an image
        from types import SimpleNamespace

        processor.video_processor = SimpleNamespace(num_frames=64, fps=1)
    model = seeded(lambda: getattr(transformers, f"{prefix}ForConditionalGeneration")(config))
    return LoadedModel(name, model, tokenizer, "vlm", name, processor=processor)


def tiny_idefics3() -> LoadedModel:
    return _idefics("tiny-idefics3", "idefics3")


def tiny_smolvlm() -> LoadedModel:
    return _idefics("tiny-smolvlm", "smolvlm")


GEMMA_TOKENS = ["<start_of_image>", "<end_of_image>", "<image_soft_token>"]
GEMMA_TEMPLATE = CHATML_TEMPLATE.replace("'<image>\n'", "'<start_of_image>'")
GEMMA_TOKENS_PER_IMAGE = 4  # 4x4 SigLIP patches average-pooled 2x2 -> a 2x2 grid of tokens


def tiny_gemma3_vlm() -> LoadedModel:
    """Gemma 3 with its vision tower: a SigLIP tower whose 4x4 patches are average-pooled into a 2x2 grid of soft
    tokens between <start_of_image> and <end_of_image>; the language model's layers alternate sliding-window and
    full attention, and image tokens attend to each other bidirectionally (token_type_ids)."""
    from transformers import Gemma3Config, Gemma3ForConditionalGeneration, Gemma3Processor, Gemma3TextConfig
    from transformers.models.gemma3.image_processing_pil_gemma3 import Gemma3ImageProcessorPil

    from workbench.models.tiny import TINY_SLIDING_WINDOW

    tokenizer = _with_tokens(GEMMA_TOKENS, GEMMA_TEMPLATE)
    tokenizer.boi_token, tokenizer.eoi_token, tokenizer.image_token = GEMMA_TOKENS
    tokenizer.boi_token_id, tokenizer.eoi_token_id, tokenizer.image_token_id = (
        tokenizer.convert_tokens_to_ids(token) for token in GEMMA_TOKENS)
    text = Gemma3TextConfig(
        vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=3, num_attention_heads=4,
        num_key_value_heads=1, head_dim=16, query_pre_attn_scalar=16, max_position_embeddings=512,
        sliding_window=TINY_SLIDING_WINDOW, sliding_window_pattern=3, initializer_range=INIT_STD,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    config = Gemma3Config(
        text_config=text, vision_config=_siglip_vision(), mm_tokens_per_image=GEMMA_TOKENS_PER_IMAGE,
        boi_token_index=tokenizer.boi_token_id, eoi_token_index=tokenizer.eoi_token_id,
        image_token_index=tokenizer.image_token_id, initializer_range=INIT_STD)
    image_processor = Gemma3ImageProcessorPil(size={"height": TINY_IMAGE_SIZE, "width": TINY_IMAGE_SIZE},
                                              do_pan_and_scan=False)
    processor = Gemma3Processor(image_processor=image_processor, tokenizer=tokenizer, chat_template=GEMMA_TEMPLATE,
                                image_seq_length=GEMMA_TOKENS_PER_IMAGE)
    model = seeded(lambda: Gemma3ForConditionalGeneration(config))
    return LoadedModel("tiny-gemma3-vlm", model, tokenizer, "vlm", "tiny-gemma3-vlm", processor=processor)



def tiny_paligemma() -> LoadedModel:
    """PaliGemma: a SigLIP tower's 4x4 patches as 16 image tokens, then BOS, the prompt and a newline, all one
    prefix that attends bidirectionally (prefix-LM); generated tokens attend causally. Gemma language model."""
    from transformers import GemmaConfig, PaliGemmaConfig, PaliGemmaForConditionalGeneration, PaliGemmaProcessor
    from transformers.models.siglip.image_processing_pil_siglip import SiglipImageProcessorPil

    tokenizer = byte_level_tokenizer()
    text = GemmaConfig(
        vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=3, num_attention_heads=4,
        num_key_value_heads=1, head_dim=16, max_position_embeddings=512, initializer_range=INIT_STD,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    config = PaliGemmaConfig(vision_config=_siglip_vision(), text_config=text, projection_dim=64, hidden_size=64,
                             image_token_index=tokenizer.convert_tokens_to_ids("<image>"))
    config.initializer_range = INIT_STD
    image_processor = SiglipImageProcessorPil(size={"height": TINY_IMAGE_SIZE, "width": TINY_IMAGE_SIZE})
    image_processor.image_seq_length = (TINY_IMAGE_SIZE // TINY_PATCH_SIZE) ** 2
    processor = PaliGemmaProcessor(image_processor=image_processor, tokenizer=tokenizer)
    model = seeded(lambda: PaliGemmaForConditionalGeneration(config))
    return LoadedModel("tiny-paligemma", model, tokenizer, "vlm", "tiny-paligemma", processor=processor)



INTERNVL_TOKENS = ["<img>", "</img>", "<IMG_CONTEXT>", "<video>"]
INTERNVL_TEMPLATE = CHATML_TEMPLATE.replace("'<image>\n'", "'<IMG_CONTEXT>\n'")


def tiny_internvl() -> LoadedModel:
    """InternVL: the image cut into up to 4 tiles of 32 pixels (plus a thumbnail when there are several), each
    tile's 4x4 patches pixel-shuffled (ratio 0.5) into 2x2 tokens between <img> and </img>; Qwen2 language model."""
    from transformers import InternVLConfig, InternVLForConditionalGeneration, InternVLProcessor, Qwen2Config
    from transformers.models.got_ocr2.image_processing_pil_got_ocr2 import GotOcr2ImageProcessorPil

    tokenizer = _with_tokens(INTERNVL_TOKENS, INTERNVL_TEMPLATE)
    for attribute, token in zip(("start_image_token", "end_image_token", "context_image_token", "video_token"),
                                INTERNVL_TOKENS):
        setattr(tokenizer, attribute, token)
        setattr(tokenizer, f"{attribute}_id", tokenizer.convert_tokens_to_ids(token))
    text = Qwen2Config(**llama_config(tokenizer).to_dict() | {"model_type": "qwen2"})
    vision = {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 4, "intermediate_size": 64,
              "image_size": TINY_IMAGE_SIZE, "patch_size": TINY_PATCH_SIZE,
              "initializer_range": INIT_STD}
    config = InternVLConfig(vision_config=vision, text_config=text, downsample_ratio=0.5,
                            image_token_id=tokenizer.context_image_token_id, vision_feature_layer=-1,
                            vision_feature_select_strategy="default")
    config.initializer_range = INIT_STD
    image_processor = GotOcr2ImageProcessorPil(size={"height": TINY_IMAGE_SIZE, "width": TINY_IMAGE_SIZE},
                                               crop_to_patches=True, min_patches=1, max_patches=4)
    processor = _image_only(InternVLProcessor)(
        image_processor=image_processor, tokenizer=tokenizer, video_processor=None,
        image_seq_length=(TINY_IMAGE_SIZE // TINY_PATCH_SIZE) ** 2 // 4, chat_template=INTERNVL_TEMPLATE)
    model = seeded(lambda: InternVLForConditionalGeneration(config))
    return LoadedModel("tiny-internvl", model, tokenizer, "vlm", "tiny-internvl", processor=processor)


MLLAMA_TOKENS = ["<|image|>", "<|python_tag|>"]
MLLAMA_TEMPLATE = CHATML_TEMPLATE.replace("'<image>\n'", "'<|image|>'")
MLLAMA_TILE = 16  # pixels a tile side: 4x4 patches of 4 pixels, plus the tower's [CLS]


def tiny_mllama() -> LoadedModel:
    """Mllama (Llama 3.2 Vision): the image cut into up to 4 tiles of 16 pixels (its aspect ratio picks the grid),
    each tile's [CLS] and 4x4 patches encoded by a local and then a gated global transformer over all tiles; the
    language model's layer 1 is a gated cross-attention layer whose keys are those tile features, its other layers
    causal self-attention over the text, where the image is one <|image|> token."""
    from transformers import MllamaConfig, MllamaForConditionalGeneration, MllamaProcessor
    from transformers.models.mllama.image_processing_pil_mllama import MllamaImageProcessorPil

    tokenizer = _with_tokens(MLLAMA_TOKENS, MLLAMA_TEMPLATE, image_token="<|image|>")
    tokenizer.image_token_id = tokenizer.convert_tokens_to_ids("<|image|>")
    text = {"vocab_size": len(tokenizer), "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 3,
            "num_attention_heads": 4, "num_key_value_heads": 2, "cross_attention_layers": [1],
            "max_position_embeddings": 512, "initializer_range": INIT_STD, "bos_token_id": tokenizer.bos_token_id,
            "eos_token_id": tokenizer.eos_token_id, "pad_token_id": tokenizer.pad_token_id}
    vision = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_global_layers": 1,
              "attention_heads": 4, "image_size": MLLAMA_TILE, "patch_size": 4, "max_num_tiles": 4,
              "intermediate_layers_indices": [0], "vision_output_dim": 64, "initializer_range": INIT_STD,
              "supported_aspect_ratios": [[1, 1], [1, 2], [1, 3], [1, 4], [2, 1], [2, 2], [3, 1], [4, 1]]}
    config = MllamaConfig(vision_config=vision, text_config=text, image_token_index=tokenizer.image_token_id)
    config.initializer_range = INIT_STD
    image_processor = MllamaImageProcessorPil(size={"height": MLLAMA_TILE, "width": MLLAMA_TILE}, max_image_tiles=4)
    processor = MllamaProcessor(image_processor=image_processor, tokenizer=tokenizer, chat_template=MLLAMA_TEMPLATE)
    model = seeded(lambda: MllamaForConditionalGeneration(config))
    return LoadedModel("tiny-mllama", model, tokenizer, "vlm", "tiny-mllama", processor=processor)


BUILDERS = {"tiny-llava-next": tiny_llava_next, "tiny-llava-onevision": tiny_llava_onevision,
            "tiny-qwen2-vl": tiny_qwen2_vl, "tiny-qwen2.5-vl": tiny_qwen2_5_vl, "tiny-qwen3-vl": tiny_qwen3_vl,
            "tiny-idefics3": tiny_idefics3, "tiny-smolvlm": tiny_smolvlm,
            "tiny-gemma3-vlm": tiny_gemma3_vlm, "tiny-paligemma": tiny_paligemma,
            "tiny-internvl": tiny_internvl, "tiny-mllama": tiny_mllama}

