"""Trace jobs started from the Runs page: validated, queued, run one at a time in a worker thread.

Dash's own background callbacks need a diskcache or Celery manager, which the workbench does not depend
on; this queue gives the same behaviour for one server process: the callback returns at once with a job
id (kept in the browser tab's store, so users only see their own jobs), an interval polls `status`, and
the progress bar follows `workbench.trace(..., progress=...)`. The new bundle is written atomically into
the traces directory, so the Runs table picks it up on its next scan.

What one server keeps is bounded: at most MAX_QUEUED jobs waiting, and finished jobs are forgotten after
FINISHED_TTL_S seconds or beyond the newest MAX_FINISHED (a tab polling a forgotten job stops polling). The
maps a form trace keeps are bounded by the spec's length (CapturePlan.build) and by MAX_MAP_MEMORY.
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
MAX_FINISHED = 64
FINISHED_TTL_S = 3600.0
MAX_MAP_MEMORY = "1GB"  # full maps one form trace may keep in memory (the server's bound, not the machine's)
PENDING = ("queued", "loading", "running", "saving")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


@dataclass(frozen=True)
class TraceRequest:
    model: str  # a registry name, or the resolved path of an allowed model folder
    prompt: str
    max_new_tokens: int = 16
    image: Path | None = None  # a stored upload under the traces directory
    plan: object = None  # the CapturePlan (maps spec checked, map memory bounded)
    name: str | None = None
    raw: bool = False  # True: the prompt as plain text; False: wrapped in the model's chat template, if it has one

    @property
    def label(self) -> str:
        """The model as bundle names show it: a registry name, or a folder's own name."""
        return Path(self.model).name if "/" in self.model or "\\" in self.model else self.model


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
    finished: float | None = None

    def public(self) -> dict:
        data = asdict(self)
        data.pop("request")
        return data


def traceable_models(access=None) -> list[dict]:
    """Models the form offers: [{name, kind, description}]: registry names, then the allowed model folders."""
    from workbench.models.registry import REGISTRY

    models = [{"name": spec.name, "kind": spec.kind, "description": spec.description} for spec in REGISTRY.values()]
    for folder in access.folders() if access is not None else ():
        try:
            kind = access.kind(str(folder))
        except WorkbenchError:
            continue
        models.append({"name": str(folder), "kind": kind, "description": f"model folder {folder.name}"})
    return models


def validate(model, prompt, max_new_tokens, *, image=None, maps=None, name=None, access=None,
             raw=False) -> TraceRequest:
    """A TraceRequest from raw form values, or an InputError saying what to fix. access: the server's
    ModelAccess (None: registry models only)."""
    from workbench.app.data.model_access import ModelAccess

    from workbench.capture import CapturePlan

    access = access or ModelAccess()
    if not isinstance(model, str) or not model:
        raise InputError("choose a model from the list")
    try:
        model = access.check(model)
    except InputError:
        raise InputError("choose a model from the list (the form traces registry models and the model folders "
                         "the server was started with)") from None
    kind = access.kind(model)
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
    if kind == "encoder":
        new_tokens = 0
    shown = Path(model).name if model not in _registry() else model
    if image is not None and kind != "vlm":
        raise InputError(f"{shown} is a text-only model; remove the image or choose a vision-language model")
    if kind == "vlm" and image is None:
        raise InputError(f"{shown} is a vision-language model; upload an image")
    if maps is not None and not isinstance(maps, str):
        raise InputError("the maps spec must be text like '0-3:all'")
    maps = (maps or "").strip() or None
    # The one parser of map specs: bounded by the spec's length, never by the numbers written in it.
    try:
        plan = CapturePlan.build(maps=maps, max_map_memory=MAX_MAP_MEMORY)
    except InputError as error:  # the plan names the CLI flag; the form calls the field "keep maps"
        raise InputError(str(error).replace("--maps", "keep maps", 1)) from None
    if not isinstance(name, (str, type(None))):
        raise InputError("the name must be text")
    name = (name or "").strip() or None
    if name is not None and not _NAME.match(name):
        raise InputError("the name may use letters, digits, '.', '_' and '-' (at most 64, not starting with '.')")
    if not isinstance(raw, bool):
        raise InputError("the prompt format must be 'plain text' or 'chat template'")
    return TraceRequest(model, prompt, new_tokens, image, plan, name, raw)


def _registry():
    from workbench.models.registry import REGISTRY

    return REGISTRY


class TraceJobs:
    def __init__(self, root: Path, pool, *, catalog=None, max_finished: int = MAX_FINISHED,
                 finished_ttl: float = FINISHED_TTL_S):
        self.root = Path(root)
        self.pool = pool
        self.catalog = catalog
        self.max_finished = max_finished
        self.finished_ttl = finished_ttl
        self._jobs: dict[str, Job] = {}
        self._queue: queue.Queue = queue.Queue()
        self._lock = threading.Lock()
        self._worker: threading.Thread | None = None

    def submit(self, request: TraceRequest) -> str:
        with self._lock:
            self._forget_finished()
            waiting = sum(1 for job in self._jobs.values() if job.state in PENDING)
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
            self._forget_finished()
            job = self._jobs.get(job_id) if isinstance(job_id, str) else None
            if job is None:
                return None
            data = job.public()
            if job.state == "queued":
                ahead = sum(1 for other in self._jobs.values()
                            if other.state in PENDING and other.started < job.started)
                data["message"] = f"queued ({ahead} ahead)" if ahead else "starting"
            return data

    def images_in_use(self) -> set[Path]:
        """Uploads that queued or running jobs will still read (the upload folder keeps them)."""
        with self._lock:
            return {job.request.image for job in self._jobs.values()
                    if job.state in PENDING and job.request.image is not None}

    def __len__(self) -> int:
        with self._lock:
            return len(self._jobs)

    def _forget_finished(self) -> None:
        """Drop finished jobs past FINISHED_TTL_S, then the oldest beyond MAX_FINISHED (caller holds the lock)."""
        now = time.time()
        finished = sorted((job for job in self._jobs.values() if job.finished is not None), key=lambda j: j.finished)
        for index, job in enumerate(finished):
            if now - job.finished > self.finished_ttl or len(finished) - index > self.max_finished:
                del self._jobs[job.id]

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
                self._update(job, state="error", message=str(error), finished=time.time())
            except Exception as error:  # shown in the form; the worker keeps serving later jobs
                self._update(job, state="error", message=f"trace failed: {type(error).__name__}: {error}"[:500],
                             finished=time.time())

    def _target(self, request: TraceRequest) -> tuple[str, Path]:
        base = request.name or f"{request.label}-{datetime.datetime.now().strftime('%Y%m%d-%H%M%S')}"
        for attempt in range(1, 1000):
            name = base if attempt == 1 else f"{base}-{attempt}"
            path = self.root / f"{name}.wbtrace"
            if not path.exists():
                return name, path
        raise InputError(f"too many bundles named {base}; choose another name")

    def _run(self, job: Job) -> None:
        request = job.request
        self._update(job, state="loading", message=f"loading {request.label}")
        tracer, lock = self.pool.get(request.model)
        name, path = self._target(request)
        self._update(job, state="running", message="tracing", done=0, total=request.max_new_tokens + 1)

        def progress(done: int, total: int) -> None:
            self._update(job, done=done, total=max(total, 1), message=f"forward {done} of {total}")

        with lock:
            trace = tracer.trace(request.prompt, str(request.image) if request.image else None,
                                 max_new_tokens=request.max_new_tokens, plan=request.plan, raw=request.raw,
                                 progress=progress)
        self._update(job, state="saving", message=f"writing {path.name}")
        trace.save(path)
        if self.catalog is not None:
            self.catalog.scan(force=True)
        self._update(job, state="done", message=f"{len(trace.tokens)} tokens; generated {trace.generation['text']!r}",
                     bundle_id=name, done=job.total, finished=time.time())
