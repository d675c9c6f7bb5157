"""`smol-llava`: a LLaVA-1.5-style model from real parts: DINOv2 ViT-S/14 (frozen) -> 2-layer MLP projector ->
SmolLM2-135M-Instruct, as a stock transformers `LlavaForConditionalGeneration`.

Only what training changes ships in data/models/smol_llava/ (a few MB): the projector and low-rank (LoRA)
adapters of the language model's attention projections. The base weights come from the packages (`dinov2-s`,
`smollm2`); the first load merges the adapters into SmolLM2's weights and saves one ordinary Hugging Face
directory in the workbench cache, keyed by the shipped files' sha256, so every analysis, backend, the app and
the CLI load it like any other LLaVA.

Image tokens: the scene is resized to 84 x 84 px, a 6 x 6 grid of DINOv2's 14 px patches, so the tower emits
36 patch tokens (plus [CLS], dropped as LLaVA does) and each image token in the language model's sequence
is one patch, row-major: no pooling layer is needed to keep sequences short, and each token's (row, col) is
the tower's own patch grid.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from workbench.errors import WeightsMissingError

IMAGE_SIZE = 84  # 6 x 6 patches of 14 px: 36 image tokens
IMAGE_TOKEN = "<image>"
VISION_FEATURE_LAYER = -2  # LLaVA-1.5 reads the tower's penultimate layer
PROJECTOR_FILE, ADAPTERS_FILE, ADAPTER_CONFIG_FILE = "projector.safetensors", "adapters.safetensors", "adapters.json"
TRAINED_FILES = (PROJECTOR_FILE, ADAPTERS_FILE, ADAPTER_CONFIG_FILE)
DEFAULT_SYSTEM = "You are a helpful AI assistant named SmolLM, trained by Hugging Face"
# SmolLM2-Instruct's own ChatML template (same default system prompt), taught to render an image part as the
# placeholder on its own line before the question, as LLaVA-1.5 lays it out.
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\n" + DEFAULT_SYSTEM + "<|im_end|>\n' }}{% endif %}"
    "{{ '<|im_start|>' + message['role'] + '\n' }}"
    "{% if message['content'] is string %}{{ message['content'] }}{% else %}{% for part in message['content'] %}"
    "{% if part['type'] == 'image' %}{{ '<image>\n' }}{% elif part['type'] == 'text' %}{{ part['text'] }}"
    "{% endif %}{% endfor %}{% endif %}"
    "{{ '<|im_end|>\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


def data_dir() -> Path:
    from workbench.models.registry import REGISTRY, data_root

    return data_root() / REGISTRY["smol-llava"].data_dir


def trained_files_present(folder: Path | None = None) -> bool:
    folder = folder or data_dir()
    return all((folder / name).exists() for name in TRAINED_FILES)


def llava_config(vision_config, text_config, image_token_id: int):
    """The stock LLaVA config joining a DINOv2 tower and a Llama-family language model."""
    from transformers import LlavaConfig

    side = IMAGE_SIZE // vision_config.patch_size
    config = LlavaConfig(vision_config=vision_config.to_dict(), text_config=text_config.to_dict(),
                         image_token_id=image_token_id, vision_feature_layer=VISION_FEATURE_LAYER,
                         vision_feature_select_strategy="default", projector_hidden_act="gelu",
                         image_seq_length=side * side, multimodal_projector_bias=True,
                         tie_word_embeddings=getattr(text_config, "tie_word_embeddings", False))
    config.architectures = ["LlavaForConditionalGeneration"]
    return config


def with_image_token(tokenizer):
    """`tokenizer` plus the `<image>` placeholder as one special token (appended at the end of the vocabulary)."""
    if IMAGE_TOKEN not in tokenizer.get_vocab():
        tokenizer.add_special_tokens({"additional_special_tokens": [IMAGE_TOKEN]})
    tokenizer.image_token = IMAGE_TOKEN
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


def processor_for(tokenizer, patch_size: int, image_mean, image_std):
    """An offline LlavaProcessor: resize the image to IMAGE_SIZE (no crop), normalise as DINOv2 was trained."""
    from transformers import LlavaProcessor
    from transformers.models.bit.image_processing_pil_bit import BitImageProcessorPil

    image_processor = BitImageProcessorPil(
        size={"height": IMAGE_SIZE, "width": IMAGE_SIZE}, do_center_crop=False, image_mean=list(image_mean),
        image_std=list(image_std), resample=3)
    return LlavaProcessor(image_processor=image_processor, tokenizer=tokenizer, patch_size=patch_size,
                          vision_feature_select_strategy="default", num_additional_image_tokens=1,
                          chat_template=tokenizer.chat_template)


def compose(vision_model, text_model, tokenizer, image_mean, image_std):
    """A LlavaForConditionalGeneration holding `vision_model` (a Dinov2Model) and `text_model` (a LlamaForCausalLM)
    with a fresh projector, the vocabulary grown by `<image>` (its embedding row zero), and its processor."""
    import torch
    from transformers import LlavaForConditionalGeneration

    tokenizer = with_image_token(tokenizer)
    old_vocab = text_model.get_input_embeddings().weight.shape[0]
    if len(tokenizer) > old_vocab:
        text_model.resize_token_embeddings(len(tokenizer), mean_resizing=False)
        with torch.no_grad():
            text_model.get_input_embeddings().weight[old_vocab:] = 0
            if not text_model.config.tie_word_embeddings:
                text_model.get_output_embeddings().weight[old_vocab:] = 0
    config = llava_config(vision_model.config, text_model.config,
                          tokenizer.convert_tokens_to_ids(IMAGE_TOKEN))
    model = LlavaForConditionalGeneration(config)
    model.model.vision_tower.load_state_dict(vision_model.state_dict())
    model.model.language_model.load_state_dict(text_model.model.state_dict())
    if not config.tie_word_embeddings:
        model.lm_head.load_state_dict(text_model.lm_head.state_dict())
    model.tie_weights()
    processor = processor_for(tokenizer, vision_model.config.patch_size, image_mean, image_std)
    return model.eval(), processor


def merge_adapters(model, adapters: dict, scale: float) -> None:
    """Fold LoRA adapters into the language model in place: W <- W + scale * B @ A for each adapted Linear.

    adapters: {"<module path>.lora_A": [rank, in], "<module path>.lora_B": [out, rank]}, paths relative to
    the LlavaForConditionalGeneration."""
    import torch

    modules = dict(model.named_modules())
    paths = {key.rsplit(".", 1)[0] for key in adapters}
    for path in sorted(paths):
        if path not in modules:
            raise WeightsMissingError(f"the shipped adapters name {path!r}, which this model does not have")
        weight = modules[path].weight
        with torch.no_grad():
            weight += scale * adapters[f"{path}.lora_B"].to(weight.dtype) @ adapters[f"{path}.lora_A"].to(weight.dtype)


def load_trained(model, folder: Path) -> None:
    """Put the shipped projector and adapters (files in `folder`) into a composed model."""
    from safetensors.torch import load_file

    model.model.multi_modal_projector.load_state_dict(load_file(str(folder / PROJECTOR_FILE)))
    adapter_config = json.loads((folder / ADAPTER_CONFIG_FILE).read_text())
    merge_adapters(model, load_file(str(folder / ADAPTERS_FILE)), adapter_config["alpha"] / adapter_config["rank"])


def trained_digest(folder: Path) -> str:
    digest = hashlib.sha256()
    for name in TRAINED_FILES:
        digest.update(hashlib.sha256((folder / name).read_bytes()).digest())
    return digest.hexdigest()[:16]


def not_trained_message(folder: Path) -> str:
    return (f"'smol-llava' has no trained weights yet: {folder} lacks {', '.join(TRAINED_FILES)}; train them with "
            f"`python {folder / 'train.py'}` (about an hour on 2 CPU cores)")


def assembled_cached(folder: Path | None = None) -> Path | None:
    """The assembled directory for the shipped trained files if an earlier load made it, else None."""
    from workbench.models.packaged import cache_dir

    folder = folder or data_dir()
    if not trained_files_present(folder):
        return None
    target = cache_dir() / "models" / f"smol-llava-{trained_digest(folder)}"
    return target if (target / "config.json").exists() and (target / "model.safetensors").exists() else None


def assembled_dir(folder: Path | None = None) -> Path:
    """A Hugging Face directory with the whole smol-llava (bases + trained files merged), made on first use."""
    from workbench.models import packaged

    folder = folder or data_dir()
    if not trained_files_present(folder):
        raise WeightsMissingError(not_trained_message(folder))
    cached = assembled_cached(folder)
    if cached is not None:
        return cached
    target = packaged.cache_dir() / "models" / f"smol-llava-{trained_digest(folder)}"
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise WeightsMissingError(f"cannot store the assembled smol-llava in {target.parent} ({error.strerror}); "
                                  "set WORKBENCH_CACHE to a writable folder") from None
    model, processor = compose_from_dirs(packaged.dinov2_dir(), packaged.smollm2_dir())
    load_trained(model, folder)
    return _publish(target, model, processor)


def _publish(target: Path, model, processor) -> Path:
    """Save into a temporary folder beside `target`, then rename: a crash leaves no half-written model."""
    import os
    import shutil
    import tempfile

    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
    try:
        os.chmod(staging, 0o755)
        model.save_pretrained(str(staging))
        processor.save_pretrained(str(staging))
        if not target.exists():  # else a concurrent assembly finished first
            os.replace(staging, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


def compose_from_dirs(vision_dir: Path, text_dir: Path):
    """compose() over the converted base directories (fp32): the training script starts from here too."""
    import transformers

    vision = transformers.Dinov2Model.from_pretrained(str(vision_dir), local_files_only=True)
    text = transformers.AutoModelForCausalLM.from_pretrained(str(text_dir), local_files_only=True)
    tokenizer = transformers.AutoTokenizer.from_pretrained(str(text_dir), local_files_only=True)
    image_processor = transformers.AutoImageProcessor.from_pretrained(str(vision_dir), local_files_only=True)
    return compose(vision, text, tokenizer, image_processor.image_mean, image_processor.image_std)
