"""Long-running work as jobs (AIP-151), shared by every worker service.

``submit`` returns a job at once (the same job for a repeated client ``request_id``);
a bounded pool of worker threads runs jobs in submission order (queued, never
overlapped past ``workers``); ``watch`` yields a job's snapshot after every change
until it ends (each snapshot has a ``sequence``; the last ``history`` are kept for
``watch(from_sequence=N)``); ``cancel`` makes the job's next progress report raise
:class:`Cancelled`, so work stops between units and publishes nothing. The registry,
request ids and watching are :mod:`common.registry`'s, shared with the controller's loops.
"""

from __future__ import annotations

import queue
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from enum import Enum
from typing import Any

from common.artifacts import ArtifactRef
from common.errors import Cancelled, MontessoriError, ResourceExhausted, Unavailable, printable
from common.logs import get_logger
from common.manifests import StageResult
from common.progress import Progress
from common.registry import DEFAULT_HISTORY, Entry, Registry

log = get_logger(__name__)


class JobState(Enum):
    QUEUED = 1
    RUNNING = 2
    SUCCEEDED = 3
    FAILED = 4
    CANCELLED = 5

    @property
    def terminal(self) -> bool:
        return self in (JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELLED)


@dataclass(frozen=True)
class JobSnapshot:
    """An immutable view of a job at one moment (what Get/Watch return)."""

    job_id: str
    request_id: str
    kind: str
    state: JobState
    #: Sequence of this snapshot within the job (1 for the QUEUED one; +1 on every change).
    sequence: int
    stage: str = ""
    done: int = 0
    total: int = 0
    eta_seconds: float = 0.0
    live_metrics: dict[str, float] = field(default_factory=dict)
    error_code: str = ""
    error_message: str = ""
    outputs: dict[str, ArtifactRef] = field(default_factory=dict)
    manifest: ArtifactRef | None = None
    metrics: dict[str, float] = field(default_factory=dict)
    submitted_at: float = 0.0


#: The work of a job: called with a progress sink, returns the stage result or plain metrics.
Work = Callable[[Progress], "StageResult | dict[str, float]"]


#: How long a finished job stays readable (GetJob/WatchJob) after it ended.
JOB_TTL_SECONDS = 3600.0


class _Job(Entry):
    """A job in the registry: its latest snapshot (also the latest event), its work and its cancel flag."""

    def __init__(self, job_id: str, request_id: str, work: Work, fingerprint: str, history: int):
        super().__init__(job_id, request_id=request_id, fingerprint=fingerprint, history=history)
        self.snapshot: JobSnapshot | None = None
        self.work = work
        self.cancel_requested = threading.Event()
        self.stage_started = time.monotonic()

    @property
    def terminal(self) -> bool:
        return self.snapshot is not None and self.snapshot.state.terminal


class JobManager:
    """Jobs of one service: a :class:`Registry` of jobs, a FIFO queue and ``workers`` threads.

    Every snapshot is an event of the job's bounded history (the last ``history`` are kept).
    """

    def __init__(
        self,
        *,
        service: str,
        workers: int = 1,
        capacity: int = 16,
        on_finish: Callable[[JobSnapshot, float], None] | None = None,
        history: int = DEFAULT_HISTORY,
        ttl_seconds: float | None = JOB_TTL_SECONDS,
    ):
        self.service = service
        self.capacity = capacity
        self._registry: Registry[_Job] = Registry(
            what="job",
            history=history,
            not_found=lambda job_id: (
                f"no job {job_id!r} on the {service} service (finished jobs expire after "
                f"{ttl_seconds:.0f} s; their results stay in the store)"
                if ttl_seconds is not None
                else f"no job {job_id!r} on the {service} service"
            ),
            ttl_seconds=ttl_seconds,
        )
        self._changed = self._registry.changed
        self._queue: queue.Queue[_Job | None] = queue.Queue()
        self._accepting = True
        self._on_finish = on_finish
        self._threads = [
            threading.Thread(target=self._run, name=f"{service}-worker-{i}", daemon=True) for i in range(workers)
        ]
        for thread in self._threads:
            thread.start()

    # -- client side ---------------------------------------------------------------------

    def submit(self, request_id: str, kind: str, work: Work, *, fingerprint: str = "") -> JobSnapshot:
        """Queue ``work``; a repeated ``request_id`` returns the existing job instead."""
        with self._changed:
            conflict = "was already used for a different request"
            existing = self._registry.existing(request_id, fingerprint, conflict=conflict)
            if existing is not None and not _rerun(existing):
                return existing.snapshot
            if not self._accepting:
                raise Unavailable(f"{self.service} is shutting down")
            if existing is not None:  # a fresh job takes over the request id; the cancelled one stays readable by id
                log.info(
                    "cancelled job re-sent; running it again",
                    extra={"job_id": existing.id, "service": self.service, "stage": kind},
                )
            waiting = sum(1 for j in self._registry.entries() if j.snapshot.state is JobState.QUEUED)
            if waiting >= self.capacity:
                raise ResourceExhausted(f"{self.service} queue is full ({self.capacity} jobs waiting); retry later")
            job_id = f"{kind}-{uuid.uuid4().hex[:12]}"
            job = _Job(job_id, request_id, work, fingerprint, self._registry.history)
            submitted_at = time.time()
            job.snapshot = self._registry.record(
                job,
                lambda sequence: JobSnapshot(
                    job_id, request_id or job_id, kind, JobState.QUEUED, sequence, submitted_at=submitted_at
                ),
            )
            self._registry.add(job)
            queued = job.snapshot  # what was submitted: a worker may take the job before this returns
        self._queue.put(job)
        log.info("job queued", extra={"job_id": job_id, "service": self.service, "stage": kind})
        return queued

    def get(self, job_id: str) -> JobSnapshot:
        with self._changed:
            return self._job(job_id).snapshot

    def cancel(self, job_id: str) -> JobSnapshot:
        with self._changed:
            job = self._job(job_id)
            if not job.snapshot.state.terminal:
                job.cancel_requested.set()
                if job.snapshot.state is JobState.QUEUED:
                    self._update(
                        job,
                        state=JobState.CANCELLED,
                        error_code=Cancelled.code,
                        error_message="cancelled before it started",
                    )
            return job.snapshot

    def watch(
        self,
        job_id: str,
        from_sequence: int | None = None,
        *,
        is_active: Callable[[], bool] = lambda: True,
        poll: float = 1.0,
    ) -> Iterator[JobSnapshot]:
        """Snapshots until the job ends: from now (None/0: the current one, then every change) or the retained
        ones from ``from_sequence`` on (see :mod:`common.registry`)."""
        return self._registry.watch(
            job_id, from_sequence, snapshot=lambda job: job.snapshot, is_active=is_active, poll=poll
        )

    def wait(self, job_id: str, timeout: float | None = None) -> JobSnapshot:
        """Block until the job ends (or ``timeout``); returns its snapshot."""
        with self._changed:
            return self._registry.wait(job_id, timeout).snapshot

    def shutdown(self, *, grace: float) -> None:
        """Stop accepting; cancel queued and running jobs; wait up to ``grace`` s for the workers."""
        with self._changed:
            self._accepting = False
            ids = [j.id for j in self._registry.entries() if not j.terminal]
        for job_id in ids:
            self.cancel(job_id)
        for _ in self._threads:
            self._queue.put(None)
        deadline = time.monotonic() + grace
        for thread in self._threads:
            thread.join(timeout=max(0.0, deadline - time.monotonic()))

    # -- worker side ---------------------------------------------------------------------

    def _job(self, job_id: str) -> _Job:
        return self._registry.get(job_id)

    def _update(self, job: _Job, **changes: Any) -> None:
        """Record the job's next snapshot (an event of its history) and wake watchers."""
        job.snapshot = self._registry.record(job, lambda sequence: replace(job.snapshot, sequence=sequence, **changes))

    def _progress_sink(self, job: _Job) -> Progress:
        def progress(stage: str, done: int, total: int, metrics: dict | None = None) -> None:
            if job.cancel_requested.is_set():
                raise Cancelled("cancelled")
            now = time.monotonic()
            with self._changed:
                if stage != job.snapshot.stage:
                    job.stage_started = now
                rate = done / max(now - job.stage_started, 1e-9)
                eta = (total - done) / rate if done and rate > 0 else 0.0
                numeric = {k: float(v) for k, v in (metrics or {}).items() if isinstance(v, (int, float))}
                self._update(job, stage=stage, done=int(done), total=int(total), eta_seconds=eta, live_metrics=numeric)

        return progress

    def _run(self) -> None:
        while True:
            job = self._queue.get()
            if job is None:
                return
            with self._changed:
                if job.snapshot.state is not JobState.QUEUED:
                    continue  # cancelled while waiting
                self._update(job, state=JobState.RUNNING)
            started = time.monotonic()
            try:
                result = job.work(self._progress_sink(job))
                if job.cancel_requested.is_set():
                    raise Cancelled("cancelled")
            except Cancelled:
                final = {"state": JobState.CANCELLED, "error_code": Cancelled.code, "error_message": "cancelled"}
            except Exception as err:
                if not job.cancel_requested.is_set():
                    final = self._failure(job, err)
                else:  # it broke because it was stopped (e.g. by the service's shutdown): not an answer to the request
                    ended = self._failure(job, err)["error_message"]
                    final = {
                        "state": JobState.CANCELLED,
                        "error_code": Cancelled.code,
                        "error_message": printable(f"cancelled while it ran; it ended with: {ended}"),
                    }
            else:
                if isinstance(result, StageResult):
                    final = {
                        "state": JobState.SUCCEEDED,
                        "outputs": dict(result.outputs),
                        "manifest": result.manifest,
                        "metrics": _numeric(result.metrics),
                    }
                else:
                    final = {"state": JobState.SUCCEEDED, "metrics": _numeric(result)}
            with self._changed:
                self._update(job, **final)
                snapshot = job.snapshot
            log.info(
                "job finished",
                extra={
                    "job_id": snapshot.job_id,
                    "service": self.service,
                    "stage": snapshot.kind,
                    "metrics": {"state": snapshot.state.name, "seconds": round(time.monotonic() - started, 3)},
                },
            )
            if self._on_finish:
                self._on_finish(snapshot, time.monotonic() - started)

    def _failure(self, job: _Job, err: Exception) -> dict[str, Any]:
        """The final state of a job whose work raised ``err``: the domain error's code, INTERNAL for a bug."""
        if isinstance(err, MontessoriError):
            return {"state": JobState.FAILED, "error_code": err.code, "error_message": printable(str(err))}
        log.error(
            "job crashed",
            exc_info=(type(err), err, err.__traceback__),
            extra={"job_id": job.snapshot.job_id, "service": self.service},
        )
        return {
            "state": JobState.FAILED,
            "error_code": "INTERNAL",
            "error_message": f"internal error ({type(err).__name__}); see the {self.service} service log",
        }


def _rerun(job: _Job) -> bool:
    """Whether a re-sent request gets a fresh job rather than ``job``: a cancelled job (by its owner, or by the
    service's shutdown, however its work ended) answered nothing; returning it would fail every retry for the
    job TTL (a loop resumed after a graceful stop, a stopped loop started again)."""
    return job.terminal and job.snapshot.state is JobState.CANCELLED


def _numeric(metrics: dict) -> dict[str, float]:
    return {k: float(v) for k, v in metrics.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
