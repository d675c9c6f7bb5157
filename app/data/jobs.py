"""Trace jobs started from the Runs page: validated, queued, run one at a time in a worker thread.

Dash's own background callbacks need a diskcache or Celery manager, which the workbench does not depend
on; this queue gives the same behaviour for one server process: the callback returns at once with a job
id (kept in the browser tab's store, so users only see their own jobs), an interval polls `status`, and
the progress bar follows `workbench.trace(..., progress=...)`. The new bundle is written atomically into
the traces directory, so the Runs table picks it up on its next scan.
"""

from __future__ import annotations

import datetime
import queue
import re
import threading
import time
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path

from workbench.errors import InputError, WorkbenchError

MAX_PROMPT_CHARS = 8000
MAX_NEW_TOKENS = 256
MAX_QUEUED = 8
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


@dataclass(frozen=True)
class TraceRequest:
    model: str
    prompt: str
    max_new_tokens: int = 16
    image: Path | None = None  # a stored upload under the traces directory
    maps: str | None = None
    name: str | None = None


@dataclass
class Job:
    id: str
    request: TraceRequest
    state: str = "queued"  # queued, loading, running, saving, done, error
    done: int = 0
    total: int = 1
    message: str = "queued"
    bundle_id: str | None = None
    started: float = field(default_factory=time.time)

    def public(self) -> dict:
        data = asdict(self)
        data.pop("request")
        return data


def traceable_models() -> list[dict]:
    """Registry names the form offers: [{name, kind, description}] (hub models only when cached)."""
    from workbench.models.registry import REGISTRY

    return [{"name": spec.name, "kind": spec.kind, "description": spec.description} for spec in REGISTRY.values()]


def validate(model, prompt, max_new_tokens, *, image=None, maps=None, name=None) -> TraceRequest:
    """A TraceRequest from raw form values, or an InputError saying what to fix."""
    from workbench.capture import MapSelection
    from workbench.models.registry import REGISTRY

    if not isinstance(model, str) or model not in REGISTRY:
        raise InputError("choose a model from the list (the form only traces registry models)")
    spec = REGISTRY[model]
    if not isinstance(prompt, str) or not prompt.strip():
        raise InputError("the prompt is empty; type some text")
    if len(prompt) > MAX_PROMPT_CHARS:
        raise InputError(f"the prompt has {len(prompt)} characters; the form takes at most {MAX_PROMPT_CHARS}")
    try:
        new_tokens = int(max_new_tokens if max_new_tokens not in (None, "") else 16)
    except (TypeError, ValueError):
        raise InputError("max new tokens must be a whole number") from None
    if not 0 <= new_tokens <= MAX_NEW_TOKENS:
        raise InputError(f"max new tokens must be between 0 and {MAX_NEW_TOKENS}")
    if spec.kind == "encoder":
        new_tokens = 0
    if image is not None and spec.kind != "vlm":
        raise InputError(f"{model} is a text-only model; remove the image or choose a vision-language model")
    if spec.kind == "vlm" and image is None:
        raise InputError(f"{model} is a vision-language model; upload an image")
    maps = (maps or "").strip() or None
    if maps is not None:
        MapSelection.parse(maps)  # raises InputError with the expected syntax
    name = (name or "").strip() or None
    if name is not None and not _NAME.match(name):
        raise InputError("the name may use letters, digits, '.', '_' and '-' (at most 64, not starting with '.')")
    return TraceRequest(model, prompt, new_tokens, image, maps, name)


class TraceJobs:
    def __init__(self, root: Path, pool, *, catalog=None):
        self.root = Path(root)
        self.pool = pool
        self.catalog = catalog
        self._jobs: dict[str, Job] = {}
        self._queue: queue.Queue = queue.Queue()
        self._lock = threading.Lock()
        self._worker: threading.Thread | None = None

    def submit(self, request: TraceRequest) -> str:
        with self._lock:
            waiting = sum(1 for job in self._jobs.values() if job.state in ("queued", "loading", "running", "saving"))
            if waiting >= MAX_QUEUED:
                raise InputError(f"{waiting} traces are already waiting; try again when they finish")
            job = Job(uuid.uuid4().hex, request)
            self._jobs[job.id] = job
            self._queue.put(job.id)  # under the lock: an idle worker only exits while holding it, queue empty
            if self._worker is None or not self._worker.is_alive():
                self._worker = threading.Thread(target=self._work, name="workbench-trace-jobs", daemon=True)
                self._worker.start()
        return job.id

    def status(self, job_id) -> dict | None:
        with self._lock:
            job = self._jobs.get(job_id) if isinstance(job_id, str) else None
            if job is None:
                return None
            data = job.public()
            if job.state == "queued":
                ahead = sum(1 for other in self._jobs.values()
                            if other.state in ("queued", "loading", "running", "saving") and other.started < job.started)
                data["message"] = f"queued ({ahead} ahead)" if ahead else "starting"
            return data

    def wait(self, job_id: str, timeout: float = 60.0) -> dict | None:
        """Block until a job ends (tests and scripts)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            status = self.status(job_id)
            if status is None or status["state"] in ("done", "error"):
                return status
            time.sleep(0.05)
        return self.status(job_id)

    def _update(self, job: Job, **changes) -> None:
        with self._lock:
            for key, value in changes.items():
                setattr(job, key, value)

    def _work(self) -> None:
        while True:
            try:
                job_id = self._queue.get(timeout=30)
            except queue.Empty:
                with self._lock:
                    if self._queue.empty():
                        self._worker = None
                        return
                continue
            job = self._jobs[job_id]
            try:
                self._run(job)
            except WorkbenchError as error:
                self._update(job, state="error", message=str(error))
            except Exception as error:  # shown in the form; the worker keeps serving later jobs
                self._update(job, state="error", message=f"trace failed: {type(error).__name__}: {error}")

    def _target(self, request: TraceRequest) -> tuple[str, Path]:
        base = request.name or f"{request.model}-{datetime.datetime.now().strftime('%Y%m%d-%H%M%S')}"
        for attempt in range(1, 1000):
            name = base if attempt == 1 else f"{base}-{attempt}"
            path = self.root / f"{name}.wbtrace"
            if not path.exists():
                return name, path
        raise InputError(f"too many bundles named {base}; choose another name")

    def _run(self, job: Job) -> None:
        request = job.request
        self._update(job, state="loading", message=f"loading {request.model}")
        tracer, lock = self.pool.get(request.model)
        name, path = self._target(request)
        self._update(job, state="running", message="tracing", done=0, total=request.max_new_tokens + 1)

        def progress(done: int, total: int) -> None:
            self._update(job, done=done, total=max(total, 1), message=f"forward {done} of {total}")

        with lock:
            trace = tracer.trace(request.prompt, str(request.image) if request.image else None,
                                 max_new_tokens=request.max_new_tokens, maps=request.maps, progress=progress)
        self._update(job, state="saving", message=f"writing {path.name}")
        trace.save(path)
        if self.catalog is not None:
            self.catalog.scan(force=True)
        self._update(job, state="done", message=f"{len(trace.tokens)} tokens; generated {trace.generation['text']!r}",
                     bundle_id=name, done=job.total)
