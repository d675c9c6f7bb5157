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


def make_tracer(backend: str, loaded, *, remote: bool | str = False):
    """A reusable `tracer(prompt, image, **options) -> Trace` for many inputs on one model (sweeps).

    Wraps the model once (booting a TransformerBridge is not free) and returns a closure.
    """
    from workbench.errors import InputError

    if backend == "hf":
        from workbench.capture import trace

        return lambda prompt, image=None, **options: trace(loaded, prompt, image, **options)
    if backend == "nnsight":
        from workbench.frontends.nnsight import NNsightFrontend, trace_nnsight

        frontend = NNsightFrontend(loaded, remote=remote)
        return lambda prompt, image=None, **options: trace_nnsight(frontend, prompt, image, **options)
    if backend == "lens":
        from workbench.frontends.transformer_lens import LensFrontend, trace_lens

        frontend = LensFrontend(loaded)
        return lambda prompt, image=None, **options: trace_lens(frontend, prompt, image, **options)
    raise InputError(f"unknown backend {backend!r}; choose one of {', '.join(BACKENDS)}")


__all__ = ["BACKENDS", "trace_with", "make_tracer"]
