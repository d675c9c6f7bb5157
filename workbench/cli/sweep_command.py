"""`workbench sweep`: trace every input of a JSONL file into Parquet features, locally or on Ray, resumably."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from workbench.cli.progress import throughput_bars


def sweep(
    model: str = typer.Option(..., "--model", "-m", help="Registry name, local dir or hub id."),
    data: Path = typer.Option(..., "--data", help='JSONL inputs: {"prompt": ..., "id"?, "image"?, "system"?}.'),
    out: Path = typer.Option(..., "--out", "-o", help="Output folder (Parquet features; re-run to resume)."),
    images: Optional[Path] = typer.Option(None, "--images", help="Folder that relative image paths refer to."),
    executor: str = typer.Option("local", "--executor", help="local (this process) or ray."),
    ray_address: Optional[str] = typer.Option(None, "--ray-address", help="Join this Ray cluster (else start one)."),
    workers: int = typer.Option(0, "--workers", help="Ray model replicas (0: as many as the cluster fits)."),
    gpus_per_worker: float = typer.Option(0, "--gpus-per-worker", help="GPUs per replica (>1: device_map)."),
    cpus_per_worker: float = typer.Option(1, "--cpus-per-worker", help="CPUs per Ray replica."),
    batch_size: int = typer.Option(8, "--batch-size", help=(
        "Inputs per worker call and per committed part; with the hf backend the inputs of a call that agree in "
        "tokens to generate and system message are traced together in left-padded forwards (results as if "
        "traced one at a time).")),
    backend: str = typer.Option("hf", "--backend", help="hf (transformers), nnsight or lens (TransformerLens)."),
    max_new_tokens: int = typer.Option(0, "--max-new-tokens", "-n", help="Tokens to generate per input."),
    bundles: int = typer.Option(0, "--bundles", help="Also save full bundles of this many evenly spread inputs."),
    system: Optional[str] = typer.Option(None, "--system", help="System message for chat templates."),
    raw: bool = typer.Option(False, "--raw", help="Do not apply the chat template."),
    kernel: str = typer.Option("auto", "--kernel", help=(
        "auto: one-pass CPU kernel (output + statistics) where it applies, else two-pass; "
        "torch: SDPA's bit-identical output + two-pass statistics; dense; triton.")),
    device: str = typer.Option("auto", "--device", help="auto, cpu, cuda, cuda:1, ..."),
    dtype: str = typer.Option("float32", "--dtype", help="float32, bfloat16 or float16."),
    threads: Optional[int] = typer.Option(None, "--threads",
                                          help="Torch threads per replica (default: --cpus-per-worker on Ray)."),
    remote: bool = typer.Option(False, "--remote", help="Run the model on NDIF (--backend nnsight, NDIF_API_KEY)."),
    force: bool = typer.Option(False, "--force", help="Delete a previous sweep in --out and start over (only what "
                                                      "the sweep wrote; other files in --out stay)."),
) -> None:
    """Trace every input in statistics mode into per-head and per-input Parquet tables plus aggregates."""
    from workbench.cli.printing import SafeConsole
    from workbench.scale import run_sweep

    console = SafeConsole(stderr=True)
    with throughput_bars() as bars:
        task = bars.add_task(f"sweep {model} ({executor})", total=None, unit="inputs", counted=0)

        def progress(done: int, total: int, traced: int) -> None:
            if traced == 0 and done:
                console.print(f"resuming: {done} of {total} inputs already done in {out}")
            bars.update(task, completed=done, total=total, counted=traced)

        result = run_sweep(model, data, out, images=images, executor=executor, backend=backend,
                           batch_size=batch_size, workers=workers, gpus_per_worker=gpus_per_worker,
                           cpus_per_worker=cpus_per_worker, ray_address=ray_address, max_new_tokens=max_new_tokens,
                           system=system, raw=raw, kernel=kernel, device=device, dtype=dtype, threads=threads,
                           bundles=bundles, remote=remote, force=force, progress=progress,
                           notify=lambda message: console.print(f"warning: {message}"))
    rate = f", {result.inputs_per_second:.2f} inputs/s" if result.n_traced else ""
    errors = f", {result.n_errors} inputs failed (see the error column of inputs/)" if result.n_errors else ""
    console.print(f"{result.n_inputs} inputs ({result.n_traced} traced now, {result.n_resumed} resumed"
                  f"{rate}){errors} -> {result.out}/heads, inputs, aggregates")
