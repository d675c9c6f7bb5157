"""Resolve a model name (registry name, local directory or hub id) and load it with the auto classes."""

from __future__ import annotations

import os
from pathlib import Path

from workbench.errors import ModelNotFoundError, WeightsMissingError
from workbench.models.loaded import LoadedModel
from workbench.models.registry import REGISTRY, closest_names, data_root

DTYPES = ("float32", "bfloat16", "float16")
ENCODER_TYPES = {"bert", "roberta", "distilbert", "xlm-roberta", "electra", "mpnet", "deberta", "deberta-v2"}
# Standalone image encoders: an image in, the encoder's attention out (kind "vision", no tokenizer).
VISION_TYPES = {"vit", "dinov2", "dinov2_with_registers", "clip_vision_model", "siglip_vision_model"}


ROPE_SCALINGS = ("linear", "dynamic", "yarn")


def load_model(name: str, *, device: str = "cpu", dtype: str = "float32", rope_scaling: str | None = None,
               max_length: int | None = None) -> LoadedModel:
    """Load `name` for tracing: a registry name (`workbench models`), a local HF directory, or a hub id.

    rope_scaling: run a RoPE model up to `max_length` positions, past its trained context, through
    transformers' RoPE scaling ("linear", "dynamic" or "yarn"; factor = max_length / trained length).

    >>> import workbench
    >>> model = workbench.load_model("tiny-llama")
    >>> model.kind, model.text_config.num_attention_heads, model.text_config.num_key_value_heads    # GQA
    ('causal', 6, 2)
    """
    if rope_scaling is not None and rope_scaling not in ROPE_SCALINGS:
        raise ModelNotFoundError(f"unknown RoPE scaling {rope_scaling!r}; use one of {', '.join(ROPE_SCALINGS)}")
    if rope_scaling is not None and not max_length:
        raise ModelNotFoundError("--rope-scaling needs --max-length N, the length to scale the context to")
    overrides = {"rope_scaling": rope_scaling, "rope_length": max_length} if rope_scaling else {}
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # the workbench shows its own progress
    if dtype not in DTYPES:
        raise ModelNotFoundError(f"unknown dtype {dtype!r}; use one of {', '.join(DTYPES)}")
    spec = REGISTRY.get(name)
    if spec is not None and spec.source == "tiny":
        from workbench.models.tiny import BUILDERS
        from workbench.models.tiny_vlm import BUILDERS as VLM_BUILDERS

        loaded = {**BUILDERS, **VLM_BUILDERS}[name]()
        if overrides:
            raise ModelNotFoundError("RoPE scaling applies to models loaded from weights, not the tiny fixtures")
    elif spec is not None and spec.kind == "vision":
        if overrides:
            raise ModelNotFoundError(f"{name!r} is a vision encoder: it has no RoPE to scale")
        from workbench.models.vision_loading import load_vision_directory

        loaded = load_vision_directory(model_directory(name), name=name, dtype=dtype,
                                       repair="delete the folder to convert the weights again")
    else:
        directory = model_directory(name)
        loaded = _load_directory(str(directory), name=name, dtype=dtype, local_only=True, **overrides)
    if device != "cpu" or dtype != "float32":
        import torch

        loaded.model.to(device=device, dtype=getattr(torch, dtype))
    return loaded


def model_directory(name: str, *, prepare: bool = True) -> Path | None:
    """The local folder holding `name`'s config, weights and tokenizer (None for the tiny fixtures, built in code).

    prepare=False finds the folder without side effects: no first conversion of packaged GGUF weights and no
    download (None where the folder does not exist yet). Unknown names and missing weights raise.
    """
    spec = REGISTRY.get(name)
    if spec is not None and spec.source == "tiny":
        return None
    if spec is not None and spec.source == "package":
        from workbench.models import packaged

        converted = {"smollm2": (packaged.smollm2_dir, packaged.smollm2_cached),
                     "gemma3-270m": (packaged.gemma3_dir, packaged.gemma3_cached),
                     "dinov2-s": (packaged.dinov2_dir, packaged.dinov2_cached)}
        if name in converted:
            convert, cached = converted[name]
            return convert() if prepare else cached()
        return packaged.minilm_dir()
    if spec is not None and spec.name == "smol-llava":  # shipped as trained parts over packaged bases
        from workbench.models import smol_llava

        return smol_llava.assembled_dir() if prepare else smol_llava.assembled_cached()
    if spec is not None and spec.source == "data":
        directory = data_root() / spec.data_dir
        if not (directory / "config.json").exists():
            raise WeightsMissingError(f"{name!r} should ship in {directory} but it is not there; run from a full "
                                      "checkout or set WORKBENCH_DATA to the repository's data/ folder")
        return directory
    if spec is not None:
        return Path(_resolve_hub(spec.hub_id, name, download=prepare))
    if Path(name).expanduser().is_dir():
        directory = Path(name).expanduser()
        if not (directory / "config.json").exists():
            raise WeightsMissingError(f"{directory} has no config.json; pass a directory saved by save_pretrained")
        return directory
    if "/" in name and not name.startswith((".", "/", "~")):
        return Path(_resolve_hub(name, name, download=prepare))
    hint = closest_names(name)
    suggestion = f" (did you mean {', '.join(hint)}?)" if hint else ""
    raise ModelNotFoundError(
        f"unknown model {name!r}{suggestion}; run `workbench models` for the names, or pass a local "
        "directory or a Hugging Face hub id"
    )


def read_config(name: str):
    """`name`'s transformers config without loading any weights, or None where the weights must come first (the
    tiny fixtures; SmolLM2 before its first conversion). Lets a capture plan be checked against the model's
    layers and heads before the model loads."""
    if REGISTRY.get(name) is not None and REGISTRY[name].source == "tiny":
        return None
    try:
        directory = model_directory(name, prepare=False)
    except WeightsMissingError:
        return None  # load_model says what is missing, with the full message
    if directory is None:
        return None
    import transformers

    try:
        return transformers.AutoConfig.from_pretrained(str(directory), local_files_only=True)
    except (OSError, ValueError):
        return None


def _hub_offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on")


def _resolve_hub(hub_id: str, name: str, *, download: bool = True) -> str:
    """A local snapshot directory of `hub_id`: the HF cache if it has one, else a download when online (and
    `download`)."""
    from huggingface_hub import constants, snapshot_download

    try:
        return snapshot_download(hub_id, local_files_only=True)
    except Exception:
        pass
    if download and not _hub_offline():
        try:
            return snapshot_download(hub_id, etag_timeout=10)
        except Exception:
            pass
    raise WeightsMissingError(
        f"weights for {name!r} ({hub_id}) are not on this machine and the hub cannot be reached: looked in "
        f"the HF cache {constants.HF_HUB_CACHE}. Download them where there is network "
        f"(`hf download {hub_id}`) and copy the cache here, point HF_HOME at a cache that has them, "
        "or pass a local directory with --model /path/to/model"
    )


def model_kind(config) -> str:
    """"vlm", "causal", "encoder" or "vision" from a transformers config: which Auto class loads it and how
    capture treats its positions (backends that wrap an already built module call this too)."""
    architectures = getattr(config, "architectures", None) or []
    if getattr(config, "model_type", "") in VISION_TYPES:
        return "vision"
    if getattr(config, "vision_config", None) is not None:
        return "vlm"
    if any("CausalLM" in arch or "LMHeadModel" in arch for arch in architectures):
        return "causal"
    if getattr(config, "model_type", "") in ENCODER_TYPES:
        return "encoder"
    return "causal"


SUPPORTED_FAMILIES = ("decoder language models (GPT-2, Llama, Mistral, Qwen2, Gemma, SmolLM2, ...)",
                      "BERT-style encoders (BERT, RoBERTa, DistilBERT, MiniLM, ...)",
                      "vision encoders (ViT, DINOv2, CLIP and SigLIP vision towers)",
                      "vision-language models (LLaVA, LLaVA-NeXT, LLaVA-OneVision, Qwen2-VL, Qwen2.5-VL, Qwen3-VL, "
                      "Idefics3, SmolVLM, Gemma 3, PaliGemma, InternVL, Mllama)")


# Vision-language families transformers loads but capture would get wrong: refused with the reason.
UNTRACEABLE_VLMS = {
    "llama4": "its image processor needs torchvision, which this torch build does not ship",
}


def check_supported(config, where) -> None:
    """Refuse, in one line and before any weights load, a config no family of the workbench can trace (a DINOv2
    or CLIP backbone, a seq2seq model): transformers would otherwise fail with a raw ValueError."""
    from transformers.models.auto import modeling_auto

    model_type = getattr(config, "model_type", "")
    names = {"vlm": modeling_auto.MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES,
             "causal": modeling_auto.MODEL_FOR_CAUSAL_LM_MAPPING_NAMES,
             "encoder": modeling_auto.MODEL_MAPPING_NAMES,
             "vision": modeling_auto.MODEL_MAPPING_NAMES}[model_kind(config)]
    if model_type not in names or model_type in UNTRACEABLE_VLMS:
        why = f" ({UNTRACEABLE_VLMS[model_type]})" if model_type in UNTRACEABLE_VLMS else ""
        raise ModelNotFoundError(f"{where} holds a {type(config).__name__} (model_type {model_type!r}), which the "
                                 f"workbench cannot trace{why}; it supports {'; '.join(SUPPORTED_FAMILIES)}")


def _apply_rope_scaling(config, rope_scaling: str, rope_length: int) -> float:
    text_config = getattr(config, "text_config", None) or config
    rope_factor = max(1.0, rope_length / text_config.max_position_embeddings)
    parameters = dict(getattr(text_config, "rope_parameters", None) or {})
    if not parameters:
        raise ModelNotFoundError(f"{type(config).__name__} does not use RoPE, so --rope-scaling cannot extend it")
    parameters.update(rope_type=rope_scaling, factor=float(rope_factor))
    if rope_scaling == "yarn":
        parameters["original_max_position_embeddings"] = text_config.max_position_embeddings
    text_config.rope_parameters = parameters
    text_config.max_position_embeddings = int(text_config.max_position_embeddings * rope_factor)
    return rope_factor


def _load_directory(directory: str, *, name: str, dtype: str, local_only: bool, rope_scaling: str | None = None,
                    rope_length: int = 0) -> LoadedModel:
    import torch
    import transformers

    try:
        config = transformers.AutoConfig.from_pretrained(directory, local_files_only=local_only)
    except (OSError, ValueError) as error:
        raise WeightsMissingError(f"cannot read a model config in {directory}: {error}".splitlines()[0]) from error
    trained_positions = getattr(getattr(config, "text_config", None) or config, "max_position_embeddings", None)
    rope_factor = _apply_rope_scaling(config, rope_scaling, rope_length) if rope_scaling else 1.0
    kind = model_kind(config)
    check_supported(config, directory)
    if kind == "vision":
        from workbench.models.vision_loading import load_vision_directory

        return load_vision_directory(Path(directory), name=name, dtype=dtype)
    auto_class = {
        "vlm": transformers.AutoModelForImageTextToText,
        "causal": transformers.AutoModelForCausalLM,
        "encoder": transformers.AutoModel,
    }[kind]
    try:
        model = auto_class.from_pretrained(directory, config=config, dtype=getattr(torch, dtype),
                                           local_files_only=local_only)
        processor = transformers.AutoProcessor.from_pretrained(directory, local_files_only=local_only) \
            if kind == "vlm" else None
        tokenizer = processor.tokenizer if processor is not None else \
            transformers.AutoTokenizer.from_pretrained(directory, local_files_only=local_only)
    except OSError as error:
        raise WeightsMissingError(
            f"cannot load {name!r} from {directory}: {str(error).splitlines()[0]}; check that the directory "
            "holds the weights and tokenizer files"
        ) from error
    extra = {"trained_positions": trained_positions}
    if rope_scaling:
        extra["rope_scaling"] = {"type": rope_scaling, "factor": float(rope_factor)}
    return LoadedModel(name, model.eval(), tokenizer, kind, directory, processor=processor,
                       revision=getattr(config, "_commit_hash", None), extra=extra)
