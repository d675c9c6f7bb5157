"""The bundles under the app's traces directory, addressed by id, and nothing else.

A bundle id is the bundle's path relative to the traces directory without the `.wbtrace` suffix
(`demo/capital` for `DIR/demo/capital.wbtrace`). Ids that come from the browser are only ever looked up
in the scanned set, never joined onto a path, so no id can reach a file outside the directory. Hidden
folders (the writer's staging folders) and symbolic links are skipped; a corrupt bundle stays in the
list with its error so the Runs page can show it while everything else keeps working.
"""

from __future__ import annotations

import os
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from workbench.errors import BundleError, WorkbenchError

SUFFIX = ".wbtrace"


@dataclass(frozen=True)
class BundleInfo:
    """What the Runs table shows about one bundle (from its manifest), or the error that prevents reading it."""

    id: str
    path: Path
    stamp: int  # manifest mtime_ns: part of every cache key, so a replaced bundle is never served stale
    error: str | None = None
    model: str = "?"
    kind: str = "?"
    prompt: str = ""
    generated: str = ""
    tokens: int = 0
    created: str = ""
    image_sha256: str | None = None
    image_size: tuple[int, int] | None = None
    stacks: dict = field(default_factory=dict)
    map_layers: dict = field(default_factory=dict)  # stack -> sorted layers with stored maps
    results: tuple[str, ...] = ()
    healthy: bool | None = None

    @property
    def ok(self) -> bool:
        return self.error is None

    @property
    def key(self) -> tuple[str, int]:
        """Cache key for anything derived from this bundle."""
        return (self.id, self.stamp)


def _stamp(path: Path) -> int:
    """The manifest's mtime_ns, or the results folder's when later: a result stored into a bundle while the app
    runs (`workbench patch --store`, `workbench rollout`, ...) is read on the next scan."""
    stamps = []
    for part in (path / "manifest.json", path / "results"):
        try:
            stamps.append(part.stat().st_mtime_ns)
        except OSError:
            pass
    return max(stamps, default=0)


def _map_layers(trace) -> dict[str, list[int]]:
    layers: dict[str, set[int]] = {}
    for name in trace.tensor_names():
        if name.endswith(".maps"):
            stack, _, rest = name.rpartition("layer_")
            layers.setdefault(stack.rstrip(".") or "text", set()).add(int(rest.split(".")[0]))
    return {stack: sorted(found) for stack, found in layers.items()}


def describe(bundle_id: str, path: Path, trace) -> BundleInfo:
    image = trace.meta["inputs"].get("image") or None
    return BundleInfo(
        id=bundle_id, path=path, stamp=_stamp(path), model=str(trace.model.get("name", "?")),
        kind=str(trace.model.get("kind", "?")), prompt=str(trace.meta["inputs"].get("prompt", "")),
        generated=str(trace.generation.get("text", "")), tokens=len(trace.tokens),
        created=str(trace.meta.get("created", "")),
        image_sha256=image.get("sha256") if isinstance(image, dict) else None,
        image_size=(image.get("width"), image.get("height")) if isinstance(image, dict) else None,
        stacks=dict(trace.dims.get("stacks", {})), map_layers=_map_layers(trace),
        results=tuple(sorted(trace.results)), healthy=trace.checks.get("healthy"),
    )


class Catalog:
    """Scans the traces directory (cached for `ttl` seconds) and opens bundles lazily (cached per stamp)."""

    def __init__(self, root: str | Path, *, max_depth: int = 4, ttl: float = 2.0, max_open: int = 32):
        self.root = Path(root).expanduser().resolve()
        self.max_depth = max_depth
        self.ttl = ttl
        self._scan_time = 0.0
        self._infos: dict[str, BundleInfo] = {}
        self._traces: dict[str, tuple[int, object]] = {}
        self._max_open = max_open
        self._lock = threading.Lock()

    # -- discovery ----------------------------------------------------------------------------------
    def _candidates(self) -> dict[str, Path]:
        found: dict[str, Path] = {}
        if not self.root.is_dir():
            return found
        base_depth = len(self.root.parts)
        for folder, dirs, _files in os.walk(self.root, followlinks=False):
            here = Path(folder)
            keep = []
            for name in sorted(dirs):
                child = here / name
                if name.startswith(".") or child.is_symlink():
                    continue
                if name.endswith(SUFFIX) and len(name) > len(SUFFIX):
                    relative = child.relative_to(self.root).as_posix()
                    found[relative[: -len(SUFFIX)]] = child
                elif len(child.parts) - base_depth < self.max_depth:
                    keep.append(name)
            dirs[:] = keep
        return found

    def scan(self, *, force: bool = False) -> list[BundleInfo]:
        """Every bundle under the root, sorted by id; corrupt ones carry their error message."""
        with self._lock:
            if not force and time.monotonic() - self._scan_time < self.ttl:
                return list(self._infos.values())
            candidates = self._candidates()
            infos: dict[str, BundleInfo] = {}
            for bundle_id, path in sorted(candidates.items()):
                previous = self._infos.get(bundle_id)
                stamp = _stamp(path)
                if previous is not None and previous.stamp == stamp and previous.path == path:
                    infos[bundle_id] = previous
                    continue
                infos[bundle_id] = self._describe(bundle_id, path)
            self._infos = infos
            self._scan_time = time.monotonic()
            return list(infos.values())

    def _describe(self, bundle_id: str, path: Path) -> BundleInfo:
        import workbench

        try:
            trace = workbench.load(path)
            return describe(bundle_id, path, trace)
        except WorkbenchError as error:
            return BundleInfo(id=bundle_id, path=path, stamp=_stamp(path), error=str(error))
        except Exception as error:  # a bundle no check foresaw must not take the whole list down
            return BundleInfo(id=bundle_id, path=path, stamp=_stamp(path),
                              error=f"{path}: unreadable ({type(error).__name__}: {error})")

    def ids(self) -> list[str]:
        return [info.id for info in self.scan()]

    def info(self, bundle_id: object) -> BundleInfo:
        """The bundle with this id; an unknown id (or a non-string) is a BundleError, never a path."""
        if not isinstance(bundle_id, str) or not bundle_id:
            raise BundleError("no bundle selected; open one on the Runs page")
        infos = {info.id: info for info in self.scan()}
        if bundle_id not in infos:
            infos = {info.id: info for info in self.scan(force=True)}
        if bundle_id not in infos:
            raise BundleError(f"no bundle {bundle_id!r} under {self.root}; pick one on the Runs page")
        return infos[bundle_id]

    def open(self, bundle_id: object):
        """The lazily loaded Trace of a bundle (kept open while its manifest is unchanged)."""
        import workbench

        info = self.info(bundle_id)
        if info.error:
            raise BundleError(info.error)
        with self._lock:
            cached = self._traces.get(info.id)
            if cached is not None and cached[0] == info.stamp:
                return cached[1]
        trace = workbench.load(info.path)
        with self._lock:
            self._traces[info.id] = (info.stamp, trace)
            while len(self._traces) > self._max_open:
                self._traces.pop(next(iter(self._traces)))
        return trace

    def default_id(self) -> str | None:
        """The bundle pages open when none is given: the most recently created readable one."""
        readable = [info for info in self.scan() if info.ok]
        if not readable:
            return None
        return max(readable, key=lambda info: (info.created, info.id)).id
