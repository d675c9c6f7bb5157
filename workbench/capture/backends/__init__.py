"""The backends behind `Tracer`: how a model is run and where the attention inputs come from.

- "hf" (`hf.py`): transformers' AttentionInterface routes every attention call through the workbench
  implementation; generation uses the KV cache.
- "nnsight" (`nnsight.py`, NDIF reachability in `ndif.py`) and "lens" (`lens.py`, TransformerLens 4.x
  `TransformerBridge`): the model runs the other library's way; their post-RoPE queries and keys are replayed
  into the same recorder and kernels (`external.py`), so every backend yields the same `Trace`.
"""

from __future__ import annotations

BACKENDS = ("hf", "nnsight", "lens")


def check_backend(backend: str, *, remote: bool | str = False) -> str:
    """`backend` if known and compatible with `remote`; one-line InputError otherwise (nothing loaded yet)."""
    from workbench.errors import InputError

    if backend not in BACKENDS:
        raise InputError(f"unknown backend {str(backend)[:40]!r}; choose --backend {', '.join(BACKENDS)}")
    if remote and backend != "nnsight":
        raise InputError("--remote runs through NDIF and needs --backend nnsight")
    return backend


def open_backend(backend: str, model, *, device: str = "cpu", dtype: str = "float32", remote: bool | str = False,
                 copy_model: bool = True, rope_scaling: str | None = None, max_length: int | None = None,
                 tokenizer=None, processor=None):
    """The backend object for `model` (a registry name / local dir / hub id, loaded here, or a LoadedModel).

    With remote (nnsight only) a name is not loaded locally: NDIF is checked first (key, network), then only the
    config and tokenizer are read. copy_model=False lets the TransformerLens bridge rewire a LoadedModel in place.
    """
    from workbench.models.loaded import LoadedModel

    check_backend(backend, remote=remote)
    if backend == "nnsight" and remote:
        from workbench.capture.backends.nnsight import NNsightBackend

        return NNsightBackend(model, remote=remote, tokenizer=tokenizer, processor=processor)
    owned = not isinstance(model, LoadedModel)
    if owned and not _is_wrapper(model):
        from workbench.models import load_model

        model = load_model(model, device=device, dtype=dtype, rope_scaling=rope_scaling, max_length=max_length)
    if backend == "hf":
        from workbench.capture.backends.hf import HFBackend

        return HFBackend(model)
    if backend == "nnsight":
        from workbench.capture.backends.nnsight import NNsightBackend

        return NNsightBackend(model, tokenizer=tokenizer, processor=processor)
    from workbench.capture.backends.lens import LensBackend

    return LensBackend(model, copy_model=copy_model and not owned)


def _is_wrapper(model) -> bool:
    """An nnsight envoy or a TransformerLens bridge handed over as it is (not a name to load)."""
    return not isinstance(model, (str, bytes)) and not hasattr(model, "__fspath__")


__all__ = ["BACKENDS", "check_backend", "open_backend"]
