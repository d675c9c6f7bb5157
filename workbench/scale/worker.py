"""One model replica of a sweep: loads the model once, traces a batch of inputs, returns one Arrow row per input.

The same class runs in-process (local executor) and as the stateful Ray Data actor of `map_batches` (ray
executor), so both executors compute with one code path. Each output row carries the input's summary plus its
per-head features as a `heads` list column: a row is a complete input, so however Ray re-chunks blocks, the
driver commits whole inputs only.
"""

from __future__ import annotations

import os
import time
from dataclasses import asdict, dataclass, field


@dataclass(frozen=True)
class WorkerConfig:
    """Everything a replica needs, picklable (it travels to Ray actors)."""

    model: str
    backend: str = "hf"  # hf | nnsight | lens
    remote: bool = False  # nnsight on NDIF: no local weights
    device: str = "auto"  # auto (cuda when the replica has a GPU), cpu, cuda, cuda:N
    dtype: str = "float32"
    gpus: float = 0  # GPUs of this replica; > 1 spreads the model over them (device_map)
    threads: int = 0  # torch intra-op threads (0 = torch's default); equal threads give bit-equal numbers
    kernel: str = "auto"
    max_new_tokens: int = 0
    system: str | None = None
    raw: bool = False
    out: str = ""  # sweep folder (bundles are written to out/bundles)
    bundle_indices: frozenset = field(default_factory=frozenset)

    def to_dict(self) -> dict:
        data = asdict(self)
        data["bundle_indices"] = sorted(self.bundle_indices)
        return data

    @classmethod
    def from_dict(cls, data: dict) -> WorkerConfig:
        return cls(**{**data, "bundle_indices": frozenset(data.get("bundle_indices", ()))})


def result_schema():
    """One row per input: the input summary plus `heads`, a list of head-feature structs."""
    import pyarrow as pa

    from workbench.scale.features import head_schema, input_schema

    return pa.schema([*input_schema(), ("heads", pa.list_(pa.struct(list(head_schema()))))])


def _place(loaded, config: WorkerConfig):
    """Move the model to this replica's device(s): one GPU, several (accelerate device_map), or the CPU."""
    import torch

    device = config.device
    if device == "auto":
        device = "cuda" if config.gpus and torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and config.gpus > 1 and torch.cuda.device_count() > 1:
        from accelerate import dispatch_model, infer_auto_device_map

        # Ray gives the actor its GPUs as CUDA_VISIBLE_DEVICES: spread the layers over all of them.
        no_split = getattr(loaded.model, "_no_split_modules", None) or []
        device_map = infer_auto_device_map(loaded.model, no_split_module_classes=no_split)
        loaded.model = dispatch_model(loaded.model, device_map=device_map)
    elif device != "cpu":
        loaded.model.to(device)
    return loaded


class SweepWorker:
    """Callable on a pyarrow Table of `SweepInput` rows; returns a Table of `result_schema()`."""

    def __init__(self, config: dict):
        import torch

        from workbench.capture import Tracer
        from workbench.models import load_model

        self.config = WorkerConfig.from_dict(config)
        if self.config.threads:
            torch.set_num_threads(self.config.threads)
        if self.config.remote:  # the model runs on NDIF; only its config and tokenizer are read here
            self.tracer = Tracer.open(self.config.model, backend="nnsight", remote=True)
            self.loaded, self.plan = self.tracer.loaded, self.tracer.plan(kernel=self.config.kernel)
            return
        # Load in the target dtype on the CPU, then place (device_map for models larger than one GPU).
        loaded = _place(load_model(self.config.model, dtype=self.config.dtype), self.config)
        self.tracer = Tracer.open(loaded, backend=self.config.backend, copy_model=False)
        self.loaded, self.plan = self.tracer.loaded, self.tracer.plan(kernel=self.config.kernel)

    def trace_one(self, item) -> dict:
        import torch

        from workbench.errors import WorkbenchError
        from workbench.scale.features import error_row

        started = time.perf_counter()
        try:
            trace = self.tracer.trace(item.prompt, item.image, plan=self.plan, max_new_tokens=self._new_tokens(item),
                                      system=self._system(item), raw=self.config.raw)
        except (WorkbenchError, torch.OutOfMemoryError) as error:  # this input's fault: record it, go on
            message = f"{type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}"
            return {**error_row(item, message, seconds=time.perf_counter() - started), "heads": []}
        return self._row(item, trace, time.perf_counter() - started)

    def trace_together(self, items: list) -> list[dict]:
        """Rows of inputs that agree in tokens to generate and system message, traced in padded batches
        (`Tracer.trace_batch`); where the batch fails on an input's fault, each is traced alone for its own row.
        Each row's seconds: its share of the batch's time, plus saving its bundle."""
        import torch

        from workbench.errors import WorkbenchError

        if len(items) == 1 or self.config.remote or self.config.backend != "hf":
            return [self.trace_one(item) for item in items]
        started = time.perf_counter()
        try:
            traces = self.tracer.trace_batch([item.prompt for item in items], [item.image for item in items],
                                             plan=self.plan, max_new_tokens=self._new_tokens(items[0]),
                                             system=self._system(items[0]), raw=self.config.raw)
        except (WorkbenchError, torch.OutOfMemoryError):
            return [self.trace_one(item) for item in items]
        share = (time.perf_counter() - started) / len(items)
        return [self._row(item, trace, share) for item, trace in zip(items, traces, strict=True)]

    def _new_tokens(self, item) -> int:
        if self.loaded.kind == "encoder":
            return 0
        return item.max_new_tokens if item.max_new_tokens is not None else self.config.max_new_tokens

    def _system(self, item):
        return item.system if item.system is not None else self.config.system

    def _row(self, item, trace, seconds: float) -> dict:
        """The result row of one traced input (its bundle saved if it is one of the kept ones)."""
        from workbench.scale.features import head_rows, input_row

        config = self.config
        started = time.perf_counter()
        bundle = None
        if item.index in config.bundle_indices:
            path = os.path.join(config.out, "bundles", f"{item.id}.wbtrace")
            trace.save(path, force=True)  # atomic; a re-run after a crash replaces it
            bundle = os.path.join("bundles", f"{item.id}.wbtrace")
        row = input_row(item, trace, seconds=seconds + time.perf_counter() - started, bundle=bundle)
        row["heads"] = head_rows(trace)
        return row

    def __call__(self, batch):
        import pyarrow as pa

        from workbench.scale.inputs import SweepInput

        items = [SweepInput(**row) for row in batch.to_pylist()]
        groups: dict[tuple, list] = {}  # the inputs of this call that can share a padded forward, in input order
        for item in items:
            groups.setdefault((self._new_tokens(item), self._system(item)), []).append(item)
        rows = {row["index"]: row for group in groups.values() for row in self.trace_together(group)}
        return pa.Table.from_pylist([rows[item.index] for item in items], schema=result_schema())
