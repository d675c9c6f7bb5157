"""`run_sweep`: trace every input of a JSONL file in statistics mode, locally or on Ray, resumably.

    >>> from workbench.scale import run_sweep
    >>> result = run_sweep("tiny-gpt2", "inputs.jsonl", "features/", executor="local")
    >>> result.heads().to_pandas().groupby("layer").sink_score.mean()

The output folder layout and the commit protocol are described in `workbench.scale.store`; the features in
`workbench.scale.features`; the aggregates in `workbench.scale.aggregate`.
"""

from __future__ import annotations

import datetime
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from workbench import option_checks
from workbench.capture.backends import check_backend
from workbench.capture.kernel_choice import check_kernel
from workbench.errors import InputError
from workbench.scale.executors import ExecutorOptions, execute
from workbench.scale.inputs import read_inputs
from workbench.scale.lock import SweepLock
from workbench.scale.store import SweepStore
from workbench.scale.worker import WorkerConfig


@dataclass
class SweepResult:
    out: Path
    n_inputs: int
    n_resumed: int  # already committed when this run started
    n_traced: int  # traced by this run
    n_errors: int
    seconds: float  # wall time of this run's tracing (model loading included)
    summary: dict = field(default_factory=dict)

    @property
    def inputs_per_second(self) -> float:
        return self.n_traced / self.seconds if self.seconds > 0 else 0.0

    def heads(self):
        return SweepStore(self.out).read_heads()

    def inputs(self):
        return SweepStore(self.out).read_inputs()


def _check_model_name(model: str) -> None:
    """Refuse a name `load_model` cannot resolve before any worker starts (a Ray actor would fail much later)."""
    from workbench.errors import ModelNotFoundError
    from workbench.models.registry import REGISTRY, closest_names

    if model in REGISTRY or Path(model).expanduser().is_dir():
        return
    if "/" in model and not model.startswith((".", "/", "~")):
        return  # a hub id: resolved (cache or download) by each worker
    hint = closest_names(model)
    suggestion = f" (did you mean {', '.join(hint)}?)" if hint else ""
    raise ModelNotFoundError(f"unknown model {model!r}{suggestion}; run `workbench models` for the names, or pass "
                             "a local directory or a Hugging Face hub id")


def _check_numbers(*, batch_size, workers, gpus_per_worker, cpus_per_worker, max_new_tokens, bundles,
                   threads) -> None:
    """Every numeric option in range and finite, before anything starts (the Python API takes these too)."""
    for option, value, low, high in (("--batch-size", batch_size, 1, 10_000_000), ("--workers", workers, 0, 100_000),
                                     ("--max-new-tokens", max_new_tokens, 0, 1_000_000),
                                     ("--bundles", bundles, 0, 10_000_000), ("--threads", threads, 1, 4096)):
        option_checks.count(option, value, low=low, high=high)
    option_checks.real("--gpus-per-worker", gpus_per_worker, low=0, high=1024)
    option_checks.real("--cpus-per-worker", cpus_per_worker, above=0, high=100_000)


def _check_device_and_dtype(device: str, dtype: str, *, local: bool) -> None:
    import re

    from workbench.models.loading import DTYPES

    if dtype not in DTYPES:
        raise InputError(f"unknown --dtype {dtype[:40]!r}; use one of {', '.join(DTYPES)}")
    if not re.fullmatch(r"auto|cpu|mps|cuda(:[0-9]{1,3})?", str(device)):
        raise InputError(f"unknown --device {str(device)[:40]!r}; use auto, cpu, cuda or cuda:N")
    if local and str(device).startswith("cuda"):
        import torch

        if not torch.cuda.is_available():
            raise InputError(f"--device {device}: CUDA is not available on this machine; use --device cpu or auto")


def _sample(n: int, k: int) -> frozenset:
    """k evenly spread input indices (deterministic, so a resumed sweep samples the same inputs)."""
    if k <= 0:
        return frozenset()
    k = min(k, n)
    return frozenset(int(i * n / k) for i in range(k))


def run_sweep(model: str, data, out, *, images=None, executor: str = "local", backend: str = "hf",
              batch_size: int = 8, workers: int = 0, gpus_per_worker: float = 0, cpus_per_worker: float = 1,
              ray_address: str | None = None, max_new_tokens: int = 0, system: str | None = None,
              raw: bool = False, kernel: str = "auto", device: str = "auto", dtype: str = "float32",
              threads: int | None = None, bundles: int = 0, remote: bool = False, force: bool = False,
              progress: Callable[[int, int, int], None] | None = None,
              notify: Callable[[str], None] | None = None) -> SweepResult:
    """Trace every input of `data` (JSONL) with `model` into Parquet features under `out` (resumable).

    executor: "local" (this process) or "ray" (Ray Data actors; `ray_address` joins a cluster, else one starts
        locally). batch_size: inputs per worker call and per committed part, traced together in padded forwards
        where they can share one (`SweepWorker.trace_together`). workers: Ray replicas (0 = fill the cluster).
        gpus_per_worker > 1 spreads each replica over several GPUs. threads: torch threads per replica (default:
        cpus_per_worker on Ray; locally the usable CPUs minus the load average, shared by the workers); equal
        threads and batch sizes give bit-identical numbers (other batch sizes agree to fp32 rounding).
    bundles: also save full bundles of this many evenly spread inputs. force: delete a previous sweep in `out`.
    remote: run the model on NDIF through nnsight (needs backend "nnsight", NDIF_API_KEY and network; checked
        first, failing at once).
    progress: called as progress(done, total, traced_this_run) after every committed part.
    notify: called with a one-line notice (a damaged part found on resume); default: warnings.warn.
    A second sweep into the same `out` while one runs is refused (OutputExistsError naming the holder's pid).
    """
    if executor not in ("local", "ray"):
        raise InputError(f"unknown executor {executor!r}; use --executor local or ray")
    check_backend(backend, remote=remote)
    check_kernel(kernel, device="cuda" if str(device).startswith("cuda") or gpus_per_worker else "cpu")
    _check_numbers(batch_size=batch_size, workers=workers, gpus_per_worker=gpus_per_worker,
                   cpus_per_worker=cpus_per_worker, max_new_tokens=max_new_tokens, bundles=bundles, threads=threads)
    _check_device_and_dtype(device, dtype, local=executor == "local" and not remote)
    if ray_address and executor != "ray":
        raise InputError("--ray-address needs --executor ray")
    if remote:
        from workbench.capture.backends.ndif import ndif_preflight

        ndif_preflight()
    if not remote:
        _check_model_name(model)
    inputs = read_inputs(Path(data), images=Path(images) if images is not None else None)
    store = SweepStore(Path(out))
    identity = {"model": model, "backend": backend, "dtype": dtype, "kernel": kernel,
                "max_new_tokens": max_new_tokens, "system": system, "raw": raw, "remote": bool(remote),
                "inputs": inputs.fingerprint}
    store.check_target()  # before the folder or its lock file is created
    store.out.mkdir(parents=True, exist_ok=True)
    with SweepLock(store.out):  # a second sweep into this folder is refused here, before any model loads
        store.open(identity, force=force)
        done = store.recover(notify)
        return _run(inputs, store, done, model=model, backend=backend, remote=remote, device=device, dtype=dtype,
                    gpus_per_worker=gpus_per_worker, cpus_per_worker=cpus_per_worker, threads=threads,
                    kernel=kernel, max_new_tokens=max_new_tokens, system=system, raw=raw, bundles=bundles,
                    executor=executor, batch_size=batch_size, workers=workers, ray_address=ray_address,
                    progress=progress)


def _run(inputs, store: SweepStore, done: set[int], *, model, backend, remote, device, dtype, gpus_per_worker,
         cpus_per_worker, threads, kernel, max_new_tokens, system, raw, bundles, executor, batch_size, workers,
         ray_address, progress) -> SweepResult:
    pending = [item for item in inputs.items if item.index not in done]
    if threads is None:  # Ray reserves CPUs per replica; locally the replicas share what the machine has free
        from workbench.threads import default_threads

        local = max(1, default_threads()[0] // max(1, int(workers or 1)))
        threads = max(1, int(cpus_per_worker)) if executor == "ray" else local
    config = WorkerConfig(model=model, backend=backend, remote=bool(remote), device=device, dtype=dtype,
                          gpus=gpus_per_worker, threads=threads, kernel=kernel, max_new_tokens=max_new_tokens,
                          system=system, raw=raw, out=str(store.out), bundle_indices=_sample(len(inputs), bundles))
    options = ExecutorOptions(executor=executor, batch_size=batch_size, workers=workers,
                              gpus_per_worker=gpus_per_worker, cpus_per_worker=cpus_per_worker,
                              ray_address=ray_address)
    total, completed, traced = len(inputs), len(done), 0
    if progress:
        progress(completed, total, traced)
    started = time.perf_counter()
    if pending:
        for table in execute(pending, config.to_dict(), options):
            count = store.commit(table)
            completed += count
            traced += count
            if progress:
                progress(completed, total, traced)
    seconds = time.perf_counter() - started
    summary = finalize(store, total=total, run={
        "executor": executor, "workers": workers, "batch_size": batch_size, "traced": traced,
        "resumed": len(done), "seconds": round(seconds, 3),
        "inputs_per_second": round(traced / seconds, 4) if traced and seconds > 0 else None,
        "finished": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")})
    return SweepResult(store.out, total, len(done), traced, summary["errors"], seconds, summary)


def finalize(store: SweepStore, *, total: int, run: dict) -> dict:
    """Check every input is committed exactly once, write the aggregate tables and summary.json."""
    from workbench.scale.aggregate import aggregate_heads, aggregate_layers

    inputs = store.read_inputs()
    indices = inputs.column("index").to_pylist()
    if len(indices) != len(set(indices)) or len(indices) != total:
        raise RuntimeError(f"{store.out}: {len(indices)} input rows for {total} inputs "
                           f"({len(indices) - len(set(indices))} duplicated); rerun the sweep to repair it")
    heads = store.read_heads()
    if heads is not None:
        store.write_table("aggregates/heads.parquet", aggregate_heads(heads))
        store.write_table("aggregates/layers.parquet", aggregate_layers(heads))
    errors = [value for value in inputs.column("error").to_pylist() if value]
    summary = {"inputs": total, "errors": len(errors), "first_errors": errors[:5],
               "head_rows": heads.num_rows if heads is not None else 0, "last_run": run}
    store.write_summary(summary)
    return summary
