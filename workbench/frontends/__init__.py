"""Front-ends for other ecosystems: nnsight (incl. NDIF remote) and TransformerLens 4.x `TransformerBridge`.

Each produces the same `Trace` as `workbench.trace` (HF capture): the front-end supplies post-RoPE q/k per layer
from its own hook points, and the workbench Recorder and kernels compute the statistics.

    >>> from workbench.frontends import trace_with
    >>> t = trace_with("lens", "tiny-llama", "Hello there")  # or "nnsight", or "hf"
"""

from __future__ import annotations

BACKENDS = ("hf", "nnsight", "lens")


def trace_with(backend: str, model, prompt: str, image=None, *, remote: bool | str = False, **options):
    """Trace through `backend` ("hf" = transformers capture, "nnsight", "lens" = TransformerLens bridge)."""
    from workbench.errors import InputError

    if backend not in BACKENDS:
        raise InputError(f"unknown backend {backend!r}; choose one of {', '.join(BACKENDS)}")
    if remote and backend != "nnsight":
        raise InputError("--remote runs through NDIF and needs --backend nnsight")
    if backend == "nnsight":
        from workbench.frontends.nnsight import trace_nnsight

        return trace_nnsight(model, prompt, image, remote=remote, **options)
    if backend == "lens":
        from workbench.frontends.transformer_lens import trace_lens

        return trace_lens(model, prompt, image, **options)
    from workbench.capture import trace

    return trace(model, prompt, image, **options)


def open_tracer(backend: str, model, *, remote: bool | str = False, device: str = "cpu", dtype: str = "float32",
                copy_model: bool = True):
    """Load/wrap `model` once for many inputs: returns (loaded, tracer) with tracer(prompt, image=None, **options).

    model: a registry name / local dir / hub id (loaded here), or a LoadedModel. With remote (nnsight only) a
    name is not loaded locally: NDIF is checked first (key, network), then only the config and tokenizer are read.
    copy_model=False lets the TransformerLens bridge rewire a LoadedModel in place (the caller gives it up).
    """
    from workbench.errors import InputError
    from workbench.models.loaded import LoadedModel

    if backend not in BACKENDS:
        raise InputError(f"unknown backend {backend!r}; choose one of {', '.join(BACKENDS)}")
    if remote and backend != "nnsight":
        raise InputError("--remote runs through NDIF and needs --backend nnsight")
    if backend == "nnsight" and remote:
        from workbench.frontends.nnsight import NNsightFrontend, trace_nnsight

        frontend = NNsightFrontend(model, remote=remote)
        return frontend.loaded, lambda prompt, image=None, **options: trace_nnsight(frontend, prompt, image, **options)
    owned = not isinstance(model, LoadedModel)
    if owned:
        from workbench.models import load_model

        model = load_model(model, device=device, dtype=dtype)
    if backend == "hf":
        from workbench.capture import trace

        return model, lambda prompt, image=None, **options: trace(model, prompt, image, **options)
    if backend == "nnsight":
        from workbench.frontends.nnsight import NNsightFrontend, trace_nnsight

        frontend = NNsightFrontend(model)
        return model, lambda prompt, image=None, **options: trace_nnsight(frontend, prompt, image, **options)
    from workbench.frontends.transformer_lens import LensFrontend, trace_lens

    frontend = LensFrontend(model, copy_model=copy_model and not owned)
    return frontend.loaded, lambda prompt, image=None, **options: trace_lens(frontend, prompt, image, **options)


__all__ = ["BACKENDS", "open_tracer", "trace_with"]
