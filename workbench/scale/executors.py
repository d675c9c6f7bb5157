"""Executors: where the `SweepWorker` replicas run. Both yield pyarrow Tables of complete per-input rows.

- local: one replica in this process, batch after batch (the embedded default).
- ray: Ray Data `map_batches` with `SweepWorker` as a stateful actor class, one actor per model replica
  (`ActorPoolStrategy(size=workers)`, `num_gpus=gpus_per_worker`, `num_cpus=cpus_per_worker`). `ray.init()`
  starts a local cluster unless `ray_address` names one to join (or Ray is already initialised by the caller,
  e.g. a notebook or a test session: then that cluster is used and left running).
"""

from __future__ import annotations

import logging
import math
import os
import socket
from collections.abc import Iterator
from dataclasses import dataclass

from workbench.errors import WorkbenchError

LOCAL_OBJECT_STORE_BYTES = 512 * 1024 * 1024  # a local cluster started here; feature rows are small


class ClusterError(WorkbenchError):
    """The Ray cluster cannot be reached or cannot run the workers."""


@dataclass(frozen=True)
class ExecutorOptions:
    executor: str = "local"  # local | ray
    batch_size: int = 8  # inputs per worker call = inputs per committed part
    workers: int = 0  # ray: model replicas (0: as many as the cluster's CPUs / GPUs allow)
    gpus_per_worker: float = 0
    cpus_per_worker: float = 1
    ray_address: str | None = None


def run_local(items: list, worker_config: dict, options: ExecutorOptions) -> Iterator:
    """Trace `items` (SweepInput) in this process; yields one result Table per batch."""
    import pyarrow as pa
    import torch

    from workbench.scale.worker import SweepWorker

    threads = torch.get_num_threads()  # the worker may pin its own: give the caller's process back its setting
    try:
        worker = SweepWorker(worker_config)
        for start in range(0, len(items), options.batch_size):
            batch = pa.Table.from_pylist([item.to_row() for item in items[start:start + options.batch_size]])
            yield worker(batch)
    finally:
        torch.set_num_threads(threads)


def _check_reachable(address: str, timeout: float = 5.0) -> None:
    """Fail at once (not after Ray's long retries) when a host:port cluster address does not answer."""
    target = address.removeprefix("ray://")
    if address == "auto" or ":" not in target:
        return
    host, _, port = target.rpartition(":")
    try:
        socket.create_connection((host, int(port)), timeout=timeout).close()
    except (OSError, ValueError) as error:
        raise ClusterError(f"cannot reach the Ray cluster at {address} ({error}); check --ray-address "
                           "(the head node's host:port, e.g. 10.0.0.1:6379, or ray://host:10001)") from None


def _init_ray(options: ExecutorOptions) -> bool:
    """Connect to (or start) Ray; returns True when this call started it (and so must shut it down)."""
    import ray

    if ray.is_initialized():
        return False
    env = {"env_vars": {key: os.environ[key] for key in ("HF_HUB_OFFLINE", "HF_HOME", "WORKBENCH_CACHE",
                                                           "WORKBENCH_DATA", "TRANSFORMERS_NO_ADVISORY_WARNINGS")
                        if key in os.environ}}
    try:
        if options.ray_address:
            _check_reachable(options.ray_address)
            ray.init(address=options.ray_address, runtime_env=env, logging_level=logging.ERROR,
                     log_to_driver=False)
        else:
            ray.init(include_dashboard=False, object_store_memory=LOCAL_OBJECT_STORE_BYTES, runtime_env=env,
                     logging_level=logging.ERROR, log_to_driver=False)
    except ClusterError:
        raise
    except Exception as error:  # ConnectionError, RuntimeError, ... from ray.init
        first_line = str(error).splitlines()[0] if str(error) else ""
        raise ClusterError(f"cannot start or join Ray ({type(error).__name__}: {first_line})") from None
    return True


def _pool_size(options: ExecutorOptions) -> int:
    import ray

    if options.workers:
        return options.workers
    resources = ray.cluster_resources()
    if options.gpus_per_worker:
        size = int(resources.get("GPU", 0) // options.gpus_per_worker)
        if size < 1:
            raise ClusterError(f"--gpus-per-worker {options.gpus_per_worker:g} but the cluster has "
                               f"{resources.get('GPU', 0):g} GPUs")
        return size
    return max(1, int(resources.get("CPU", 1) // max(options.cpus_per_worker, 1e-9)))


def run_ray(items: list, worker_config: dict, options: ExecutorOptions) -> Iterator:
    """Trace `items` on a Ray cluster; yields result Tables as replicas finish batches (in any order)."""
    import ray
    import ray.data

    from workbench.scale.worker import SweepWorker

    # Ray's Python loggers repeat every failure with internal tracebacks; the sweep reports errors itself.
    quiet = {name: logging.getLogger(name).level for name in ("ray", "ray.data")}
    for name in quiet:
        logging.getLogger(name).setLevel(logging.CRITICAL)
    started_here = _init_ray(options)
    try:
        context = ray.data.DataContext.get_current()
        context.enable_progress_bars = False  # the CLI shows its own, with throughput
        context.print_on_execution_start = False
        size = _pool_size(options)
        rows = [item.to_row() for item in items]
        blocks = max(1, math.ceil(len(rows) / options.batch_size))
        dataset = ray.data.from_items(rows, override_num_blocks=blocks).map_batches(
            SweepWorker, fn_constructor_kwargs={"config": worker_config}, batch_size=options.batch_size,
            batch_format="pyarrow", compute=ray.data.ActorPoolStrategy(size=size),
            num_gpus=options.gpus_per_worker or None, num_cpus=options.cpus_per_worker,
        )
        try:
            yield from dataset.iter_batches(batch_size=None, batch_format="pyarrow")
        except Exception as error:
            user_error = _user_error(error)
            if user_error is None:
                raise
            raise user_error from None  # e.g. a bad model name, raised in every actor's constructor
    finally:
        if started_here:
            ray.shutdown()
        for name, level in quiet.items():
            logging.getLogger(name).setLevel(level)


def _user_error(error: BaseException) -> WorkbenchError | None:
    """The WorkbenchError behind a Ray failure, as one line.

    Ray re-raises an error from an actor's constructor (e.g. a bad model name) as ActorDiedError whose message
    embeds the remote traceback and ends with "workbench.errors.<Class>: <message>"; rebuild that error.
    """
    import re

    import workbench.errors as errors

    chain, seen = [], set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        chain.append(error)
        error = error.__cause__ or error.__context__
    for item in chain:
        if isinstance(item, WorkbenchError) and "Traceback" not in str(item):
            return item
    for item in chain:
        found = re.findall(r"workbench\.errors\.(\w+): ([^\n]+)", str(item))
        if found:
            name, message = found[-1]
            cls = getattr(errors, name, WorkbenchError)
            return cls(message) if isinstance(cls, type) and issubclass(cls, WorkbenchError) else None
    return None


def execute(items: list, worker_config: dict, options: ExecutorOptions) -> Iterator:
    if options.executor == "local":
        return run_local(items, worker_config, options)
    if options.executor == "ray":
        return run_ray(items, worker_config, options)
    raise WorkbenchError(f"unknown executor {options.executor!r}; use local or ray")
