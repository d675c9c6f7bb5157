"""Saving and loading probes without pickle: one safetensors file whose header metadata holds the JSON config.

    NAME.probe = safetensors (tensors: the weights as float32/int64 arrays) + metadata
                 {"format": "workbench-probe", "schema_version": "1", "probe": <JSON config>}

The config names the detector ("lookback", "nonkes", "attention-graph"), how it was trained (dataset,
model, layers x heads, split) and its held-out metrics. Loading checks all of it and raises a one-line
`WorkbenchError` for anything else.
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from workbench.errors import InputError, OutputExistsError, WorkbenchError

FORMAT = "workbench-probe"
SCHEMA_VERSION = 1
DETECTORS = ("lookback", "nonkes", "attention-graph")


@dataclass
class StoredProbe:
    """A probe's config (JSON-able dict) and weights (name -> numpy array)."""

    config: dict
    tensors: dict[str, np.ndarray] = field(default_factory=dict)

    @property
    def detector(self) -> str:
        return self.config["detector"]


def check_output_path(path: str | Path, *, force: bool) -> Path:
    """Where a probe may be written (workbench/output_paths.py: with force, only a probe file is replaced)."""
    from workbench.output_paths import check_output

    return check_output(Path(path), force=force, what="probe", ours=is_probe_file, ours_is="a probe file")


def is_probe_file(path: Path) -> bool:
    """True for a safetensors file whose metadata names our format (a probe `save` wrote)."""
    if path.is_symlink() or not path.is_file():
        return False
    with open(path, "rb") as handle:
        head = handle.read(8)
        if len(head) < 8:
            return False
        size = int.from_bytes(head, "little")
        if size > 16 * 1024 * 1024:  # a probe's header is a few KB
            return False
        header = handle.read(size)
    return f'"format":"{FORMAT}"'.encode() in header.replace(b" ", b"")


def save(probe: StoredProbe, path: str | Path, *, force: bool = False) -> Path:
    from safetensors.numpy import save_file

    path = check_output_path(path, force=force)
    tensors = {name: np.ascontiguousarray(value) for name, value in probe.tensors.items()}
    metadata = {"format": FORMAT, "schema_version": str(SCHEMA_VERSION), "probe": json.dumps(probe.config)}
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(handle)
    try:
        save_file(tensors, temporary, metadata=metadata)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    return path


def load(path: str | Path) -> StoredProbe:
    from safetensors import SafetensorError, safe_open

    path = Path(path).expanduser()
    if not path.is_file():
        raise InputError(f"probe {path} does not exist; train one with `workbench probe train ... --out {path}`")
    try:
        with safe_open(str(path), framework="np") as handle:
            metadata = handle.metadata() or {}
            tensors = {name: handle.get_tensor(name) for name in handle.keys()}
    except (SafetensorError, OSError, ValueError, RuntimeError) as error:
        reason = str(error).splitlines()[0] if str(error) else "unreadable"
        raise WorkbenchError(f"{path} is not a probe file ({reason});"
                             " pass a .probe written by `workbench probe train`") from None
    if metadata.get("format") != FORMAT:
        raise WorkbenchError(f"{path} is a safetensors file but not a workbench probe; pass a .probe written by "
                             "`workbench probe train`")
    if int(metadata.get("schema_version", "0")) > SCHEMA_VERSION:
        raise WorkbenchError(f"{path} uses probe schema {metadata['schema_version']}, newer than this workbench reads")
    try:
        config = json.loads(metadata["probe"])
    except (KeyError, json.JSONDecodeError):
        raise WorkbenchError(f"{path} has no readable probe config; the file is damaged, train it again") from None
    if not isinstance(config, dict) or config.get("detector") not in DETECTORS:
        detector = config.get("detector") if isinstance(config, dict) else None
        raise WorkbenchError(f"{path} names an unknown detector {detector!r}; it was written by another tool")
    return StoredProbe(config, tensors)
