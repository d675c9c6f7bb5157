"""The one place where capture decides which statistics kernel runs.

A user asks for a kernel by name (`--kernel`, `CapturePlan.kernel`); `check_kernel` refuses names that do
not exist or cannot run here before anything loads. While capturing, `choose` turns the request into the
implementation that actually runs for one attention call; the recorder counts what ran, per stack, and the
manifest stores those counts (`capture.kernels_run`). Capture never hands "auto" to the kernels package.

Implementations:
    one-pass  the C++ CPU kernel: layer output and statistics from one computation of the scores (fp32 CPU,
              causal or no mask, no top-k, no maps of this layer, no intervention, no dropout)
    torch     SDPA's own output (bit-identical logits) + the block-wise two-pass statistics
    triton    SDPA's output + the Triton statistics kernels (CUDA)
    dense     SDPA's output + statistics from the full map (the reference; short inputs)
"""

from __future__ import annotations

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


def choose(kernel: str, query, key, value, *, plain_mask: bool, wants_maps: bool, top_k: int,
           editing: bool, dropout: float) -> str:
    """The implementation that runs for one attention call, from the requested `kernel`.

    plain_mask: transformers handed no mask (causal, or none at all): the only masks the one-pass kernel takes.
    """
    if kernel != "auto":
        return kernel
    if plain_mask and not (wants_maps or top_k or editing or dropout):
        from workbench.kernels import MaskSpec, fused_cpu

        if fused_cpu.applies(query, key, value, MaskSpec(causal=True)):
            return "one-pass"
    if query.is_cuda:
        from workbench.kernels import IMPLEMENTATIONS

        if "triton" in IMPLEMENTATIONS:
            from workbench.kernels.triton_stats import MAX_TOP_K

            if top_k <= MAX_TOP_K:
                return "triton"
    return "torch"
