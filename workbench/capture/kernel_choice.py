"""The one place where capture decides which statistics kernel runs.

A user asks for a kernel by name (`--kernel`, `CapturePlan.kernel`); `check_kernel` refuses names that do
not exist or cannot run here before anything loads. While capturing, `choose` turns the request into the
implementation that actually runs for one attention call, and, where "auto" on CPU could not take the one-pass
kernel, why not; the recorder counts both per stack and the manifest stores them (`capture.kernels_run`,
`capture.kernel_fallbacks`), which `workbench info` prints. Capture never hands "auto" to the kernels package.

Implementations:
    one-pass  the C++ CPU kernel: layer output and statistics from one computation of the scores (fp32 CPU,
              a mask that gives every query row one contiguous run of keys: none, causal, sliding window,
              chunked-local, prefix-LM; no top-k, no maps of this layer, no intervention, no dropout)
    torch     SDPA's own output (bit-identical logits) + the block-wise two-pass statistics
    triton    SDPA's output + the Triton statistics kernels (CUDA)
    dense     SDPA's output + statistics from the full map (the reference; short inputs)
"""

from __future__ import annotations

from typing import NamedTuple

from workbench.errors import InputError

KERNELS = ("auto", "torch", "dense", "triton")
IMPLEMENTATIONS_RUN = ("one-pass", "torch", "triton", "dense")


def check_kernel(kernel: str, *, device: str = "cpu") -> str:
    """`kernel` if it can run on `device`; one-line InputError otherwise (nothing loaded yet)."""
    if kernel not in KERNELS:
        raise InputError(f"unknown --kernel {kernel!r}; choose one of {', '.join(KERNELS)}")
    if kernel == "triton":
        import importlib.util
        import os

        if importlib.util.find_spec("triton") is None:
            raise InputError("--kernel triton needs the triton package, which is not installed; use --kernel auto")
        if not str(device).startswith("cuda") and os.environ.get("TRITON_INTERPRET") != "1":
            raise InputError("--kernel triton runs on CUDA tensors; pass --device cuda (or use --kernel auto on CPU)")
    return kernel


class Choice(NamedTuple):
    """What runs for one attention call; fallback: why "auto" on CPU did not take the one-pass kernel (else None)."""

    implementation: str
    fallback: str | None = None


def choose(kernel: str, query, key, value, *, mask, wants_maps: bool, top_k: int, editing: bool,
           dropout: float, biased_mask: bool = False) -> Choice:
    """The implementation that runs for one attention call, from the requested `kernel`.

    mask: the call's MaskSpec as SDPA reads it (`recorder.mask_spec`), or None where the layer output exists
    already (a backend that ran the model itself): then only a two-pass kernel can serve, and that is no fallback.
    biased_mask: the model's float mask adds finite biases to the scores (`recorder.mask_adds_bias`); the
    one-pass kernel reads a mask as visibility only.
    """
    if kernel != "auto":
        return Choice(kernel)
    fallback = None
    if mask is not None and not query.is_cuda:
        fallback = _why_not_one_pass(query, key, value, mask, wants_maps=wants_maps, top_k=top_k, editing=editing,
                                     dropout=dropout, biased_mask=biased_mask)
        if fallback is None:
            return Choice("one-pass")
    return Choice(_two_pass(query, top_k), fallback)


def _why_not_one_pass(query, key, value, mask, *, wants_maps, top_k, editing, dropout, biased_mask) -> str | None:
    if wants_maps:
        return "full maps requested for this layer"
    if top_k:
        return "top-k requested"
    if editing:
        return "an intervention edits the layer output"
    if dropout:
        return "attention dropout"
    if biased_mask:
        return "a float mask that adds biases to the scores"
    from workbench.kernels import fused_cpu

    return fused_cpu.unsupported(query, key, value, mask)


def _two_pass(query, top_k: int) -> str:
    """The two-pass statistics "auto" picks: triton on CUDA where importable (and top-k fits), else torch."""
    if query.is_cuda:
        from workbench.kernels import IMPLEMENTATIONS

        if "triton" in IMPLEMENTATIONS:
            from workbench.kernels.triton_stats import MAX_TOP_K

            if top_k <= MAX_TOP_K:
                return "triton"
    return "torch"
