"""Loops run by the controller service: each in its own thread, with a state, a bounded event
history for watchers, and a stop flag. Several loops may run at once; the worker services queue
their jobs. The registry (ids, request ids, events, watching) is :mod:`common.registry`'s, shared
with the worker services' jobs.

The loop runner reports events as kind strings (``on_event("stage_started", ...)``); they stay
strings inside the controller (the metrics gauges key on them) and become :data:`EVENT_KINDS`'s
``LoopEventKind`` values on the wire."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from enum import Enum

from common.artifacts import ArtifactRef, ArtifactStore
from common.errors import Cancelled, FailedPrecondition, Interrupted, MontessoriError, Unavailable, printable
from common.logs import get_logger
from common.metrics import ServiceMetrics
from common.protoconv import ref_to_proto
from common.registry import DEFAULT_HISTORY, Entry, Registry
from montessori.v1 import common_pb2, controller_pb2
from services.controller.config import RunConfig
from services.controller.executor import StageExecutor
from services.controller.loop import STATE, LoopRunner, new_loop_id

log = get_logger(__name__)

#: The last event of every loop, recorded here when the loop reaches its final state.
LOOP_ENDED = "loop_ended"
#: ``waiting_for`` of a resumed loop until its workers have answered (or one did not: then that one is named).
_CHECKING = "the workers: checking the loop's settings and data before it resumes"
#: Not an event: the loop's current state, first item of a watch from now.
SNAPSHOT = "snapshot"
#: Event kind (what LoopRunner's on_event and common.metrics use) -> LoopEvent.kind on the wire.
EVENT_KINDS = {
    "stage_started": controller_pb2.LOOP_EVENT_KIND_STAGE_STARTED,
    "stage_finished": controller_pb2.LOOP_EVENT_KIND_STAGE_FINISHED,
    "progress": controller_pb2.LOOP_EVENT_KIND_PROGRESS,
    "round_finished": controller_pb2.LOOP_EVENT_KIND_ROUND_FINISHED,
    "evaluation_finished": controller_pb2.LOOP_EVENT_KIND_EVALUATION_FINISHED,
    "loop_finished": controller_pb2.LOOP_EVENT_KIND_LOOP_FINISHED,
    LOOP_ENDED: controller_pb2.LOOP_EVENT_KIND_LOOP_ENDED,
    SNAPSHOT: controller_pb2.LOOP_EVENT_KIND_SNAPSHOT,
}


_unknown_kinds: set[str] = set()


def event_kind(kind: str) -> int:
    """The wire enum of an event kind; an unknown one (a runner newer than this map) is UNSPECIFIED, not an error."""
    value = EVENT_KINDS.get(kind)
    if value is None:
        if kind not in _unknown_kinds:
            _unknown_kinds.add(kind)
            log.warning("unknown loop event kind", extra={"stage": "controller", "metrics": {"kind": kind}})
        return controller_pb2.LOOP_EVENT_KIND_UNSPECIFIED
    return value


class LoopState(Enum):
    RUNNING = 1
    SUCCEEDED = 2
    FAILED = 3
    STOPPED = 4


@dataclass(frozen=True)
class LoopSnapshot:
    """A loop at one moment."""

    loop_id: str
    state: LoopState
    store_uri: str
    started_at: float
    iteration: int = 0
    stage: str = ""
    rounds_completed: int = 0
    error_message: str = ""
    summary: ArtifactRef | None = None
    #: Set while a resumed loop waits for a worker to answer: which one, and what it answered.
    waiting_for: str = ""

    def to_proto(self) -> controller_pb2.Loop:
        message = controller_pb2.Loop(
            loop_id=self.loop_id,
            state=self.state.value,
            iteration=self.iteration,
            stage=self.stage,
            rounds_completed=self.rounds_completed,
            error_message=self.error_message,
            age_seconds=time.time() - self.started_at,
            store_uri=self.store_uri,
            waiting_for=self.waiting_for,
        )
        if self.summary:
            message.summary.CopyFrom(ref_to_proto(self.summary))
        return message


@dataclass(frozen=True)
class LoopEvent:
    """One event of a loop (or, with kind ``snapshot``, its current state; the sequence is then the latest event's)."""

    sequence: int
    kind: str  # a key of EVENT_KINDS
    iteration: int
    stage: str
    loop: LoopSnapshot
    metrics: dict[str, float] = field(default_factory=dict)
    progress: tuple | None = None  # (label, done, total, metrics)

    def to_proto(self) -> controller_pb2.LoopEvent:
        message = controller_pb2.LoopEvent(
            sequence=self.sequence,
            kind=event_kind(self.kind),
            iteration=self.iteration,
            stage=self.stage,
            metrics=self.metrics,
            loop=self.loop.to_proto(),
        )
        if self.progress:
            label, done, total, metrics = self.progress
            message.progress.CopyFrom(
                common_pb2.Progress(
                    stage=label,
                    done=done,
                    total=total,
                    metrics={k: float(v) for k, v in metrics.items() if isinstance(v, (int, float))},
                )
            )
        return message


class _Loop(Entry):
    """A loop in the registry: its snapshot, its events (:class:`LoopEvent`), its stop flags and its thread."""

    def __init__(self, snapshot: LoopSnapshot, request_id: str, fingerprint: str, history: int = DEFAULT_HISTORY):
        super().__init__(snapshot.loop_id, request_id=request_id, fingerprint=fingerprint, history=history)
        self.snapshot = snapshot
        self.stop = threading.Event()
        #: Set with ``stop`` when this controller stops or loses the leadership (not by StopLoop): the loop stays
        #: running in the store and its work in flight on the workers, for the next controller. Per loop, so a
        #: thread that notices late still knows why it stopped.
        self.interrupted = threading.Event()
        self.thread: threading.Thread | None = None

    @property
    def terminal(self) -> bool:
        return self.snapshot.state is not LoopState.RUNNING


class LoopManager:
    """All loops of this controller; each keeps its last ``history`` events for WatchLoop."""

    def __init__(
        self,
        store: ArtifactStore,
        executor_factory: Callable[[str], StageExecutor],
        *,
        history: int = DEFAULT_HISTORY,
        retry_seconds: float = 2.0,
        max_retry_seconds: float = 60.0,
    ):
        self.store = store
        self.executor_factory = executor_factory
        #: Backoff of a resumed loop whose workers do not answer yet: first wait, doubled up to the second.
        self.retry_seconds, self.max_retry_seconds = retry_seconds, max_retry_seconds
        self._registry: Registry[_Loop] = Registry(what="loop", history=history)
        self._changed = self._registry.changed
        self._shutting_down = threading.Event()
        #: False on a controller replica that does not hold the leader lease.
        self.accepting = True
        #: The service's metrics (set by servicer.build): loop events and states feed its loop gauges.
        self.metrics: ServiceMetrics | None = None

    def start(
        self,
        config: RunConfig,
        *,
        request_id: str,
        fingerprint: str,
        loop_id: str | None = None,
        field_prefix: str = "",
        resume: bool = False,
    ) -> LoopSnapshot:
        """Start (or, for a known request id, return) a loop. Its settings and inputs are validated by the workers
        first (:meth:`LoopRunner.prepare`): a bad one is an error naming ``<field_prefix>.<run-config field>``.

        ``resume`` (a loop the store says is running): the loop is registered at once and validated in its own
        thread, again and again with backoff while a worker does not answer (shown in ``waiting_for``)."""
        if not self.accepting:
            raise Unavailable("this controller replica is not the leader; retry (the Service routes to the leader)")
        with self._changed:
            existing = self._existing(request_id, fingerprint, loop_id)
            if existing is not None:
                return existing.snapshot
            if loop_id is None:
                loop_id = new_loop_id(config)
                if loop_id in self._registry or self.store.exists(f"loops/{loop_id}/{STATE}"):
                    loop_id = f"{loop_id}-{uuid.uuid4().hex[:6]}"
        executor = self.executor_factory(loop_id)
        loop_holder: dict = {}
        runner = LoopRunner(
            config,
            store=self.store,
            executor=executor,
            loop_id=loop_id,
            state_extra={"request_id": request_id, "request_fingerprint": fingerprint},
            interrupted=lambda: loop_holder["loop"].interrupted.is_set(),
            on_event=lambda kind, iteration, stage, metrics=None, progress=None: self._event(
                loop_holder["loop"], kind, iteration, stage, metrics or {}, progress
            ),
            should_stop=lambda: loop_holder["loop"].stop.is_set(),
        )
        if not resume:
            try:
                runner.prepare()
            except MontessoriError as err:
                executor.close()
                raise err.with_prefix(field_prefix) if field_prefix and err.field else err from None
        waiting = _CHECKING if resume else ""
        loop = _Loop(
            LoopSnapshot(loop_id, LoopState.RUNNING, self.store.uri(runner.prefix), time.time(), waiting_for=waiting),
            request_id,
            fingerprint,
            self._registry.history,
        )
        loop_holder["loop"] = loop
        with self._changed:
            # Checked again: a concurrent start with the same request id (or loop id) may have won meanwhile.
            existing = self._existing(request_id, fingerprint, loop_id)
            clash = loop_id in self._registry and not self._registry.get(loop_id).terminal
            if existing is None and not clash:
                self._registry.add(loop)
        if existing is not None or clash:
            executor.close()
            if existing is None:
                raise FailedPrecondition(f"loop {loop_id!r} is already running", field="loop_id")
            return existing.snapshot
        if self._shutting_down.is_set():  # shut down while it started: it stays resumable like the others
            loop.interrupted.set()
            loop.stop.set()
        self._observe_state(loop)
        loop.thread = threading.Thread(
            target=self._run, args=(loop, runner, executor, resume), name=f"loop-{loop_id}", daemon=True
        )
        loop.thread.start()
        log.info("loop accepted", extra={"loop_id": loop_id, "stage": "controller"})
        return loop.snapshot

    def resume_all(self) -> list[str]:
        """Pick up every loop the store says is still running (after a restart, here or on another machine).

        Level-triggered: a loop whose workers do not answer yet (a teacher still loading after a cluster restart)
        is registered now, shown waiting for that worker, and checked again with backoff until they answer."""
        from common.config import from_dict

        resumed = []
        for key in self.store.list("loops"):
            if not key.endswith(f"/{STATE}") or key.count("/") != 2:
                continue
            loop_id = key.split("/")[1]
            # One unreadable loop (a state.json whose digest sidecar a crash left behind, a config this version
            # rejects) is logged and left as it is: it must not keep the controller or the other loops from starting.
            try:
                state = self.store.get_json(key)
                current = self._registry.get(loop_id) if loop_id in self._registry else None
                if state.get("status") != "running" or (current and current.snapshot.state is LoopState.RUNNING):
                    continue
                config = from_dict(RunConfig, state["config"])
                self.start(
                    config,
                    request_id=state.get("request_id", ""),
                    fingerprint=state.get("request_fingerprint", ""),
                    loop_id=loop_id,
                    resume=True,
                )
                resumed.append(loop_id)
            except (MontessoriError, KeyError, TypeError, ValueError) as err:
                log.error(
                    "cannot resume loop",
                    extra={"loop_id": loop_id, "stage": "controller", "metrics": {"error": printable(str(err))}},
                )
        if resumed:
            log.info("loops resumed", extra={"stage": "controller", "metrics": {"loops": resumed}})
        return resumed

    def _run(self, loop: _Loop, runner: LoopRunner, executor, resume: bool = False) -> None:
        try:
            if resume and not self._wait_for_workers(loop, runner):
                if loop.interrupted.is_set():
                    raise Interrupted("interrupted while waiting for the workers")
                runner.record_stopped()  # StopLoop while it waited: not resumed again
                final = {"state": LoopState.STOPPED}
            else:
                summary = runner.run()
                state = LoopState.STOPPED if summary["stopped"] else LoopState.SUCCEEDED
                final = {"state": state, "summary": ArtifactRef(summary["summary_uri"], summary["summary_sha256"])}
        except Cancelled:  # interrupted by shutdown or lost leadership; the store still says running
            final = {
                "state": LoopState.STOPPED,
                "error_message": "interrupted (controller shutdown or lost leadership); the next controller resumes it",
            }
        except MontessoriError as err:
            final = {"state": LoopState.FAILED, "error_message": printable(str(err))}
        except Exception as err:  # noqa: BLE001 - the loop must end in a state, whatever happened
            log.exception("loop crashed", extra={"loop_id": loop.snapshot.loop_id, "stage": "controller"})
            final = {
                "state": LoopState.FAILED,
                "error_message": f"internal error ({type(err).__name__}); see the controller log",
            }
        finally:
            close = getattr(executor, "close", None)
            if close:
                close()
        with self._changed:  # the final state and the last event together: watchers see both or neither
            loop.snapshot = replace(loop.snapshot, stage="", waiting_for="", **final)
            self._append(loop, LOOP_ENDED, 0, "loop", {}, None)
        self._observe_state(loop)

    def _wait_for_workers(self, loop: _Loop, runner: LoopRunner) -> bool:
        """Validate a resumed loop with its workers (:meth:`LoopRunner.prepare`), again with backoff for as long as
        one does not answer, showing which in ``waiting_for``; False when the loop was stopped meanwhile."""
        delay = self.retry_seconds
        while not loop.stop.is_set():
            try:
                runner.prepare()
            except Unavailable as err:
                with self._changed:
                    loop.snapshot = replace(loop.snapshot, waiting_for=printable(err.message))
                    self._registry.notify()
                log.warning(
                    "loop waits for a worker",
                    extra={
                        "loop_id": loop.id,
                        "stage": "controller",
                        "metrics": {"waiting_for": loop.snapshot.waiting_for, "retry_seconds": delay},
                    },
                )
                loop.stop.wait(delay)
                delay = min(delay * 2, self.max_retry_seconds)
                continue
            with self._changed:
                loop.snapshot = replace(loop.snapshot, waiting_for="")
                self._registry.notify()
            return True
        return False

    def _existing(self, request_id: str, fingerprint: str, loop_id: str | None) -> _Loop | None:
        """The loop a request id started (FAILED_PRECONDITION for another spec); not when that loop, ended, is
        the one being resumed (``loop_id``)."""
        conflict = "was already used for a different loop spec"
        existing = self._registry.existing(request_id, fingerprint, conflict=conflict)
        if existing is not None and existing.id == loop_id and existing.terminal:
            return None
        return existing

    def _append(self, loop: _Loop, kind: str, iteration: int, stage: str, metrics: dict, progress) -> None:
        self._registry.record(
            loop, lambda sequence: LoopEvent(sequence, kind, iteration, stage, loop.snapshot, metrics, progress)
        )

    def _event(self, loop: _Loop, kind: str, iteration: int, stage: str, metrics: dict, progress) -> None:
        with self._changed:
            changes = {}
            if kind == "stage_started":
                changes = {"iteration": iteration, "stage": f"iter-{iteration}/{stage}" if iteration else stage}
            elif kind == "round_finished":
                changes = {"rounds_completed": loop.snapshot.rounds_completed + 1}
            if changes:
                loop.snapshot = replace(loop.snapshot, **changes)
            self._append(loop, kind, iteration, stage, metrics, progress)
        if self.metrics:  # the event's iteration stands in for a metrics dict without one
            self.metrics.observe_loop_event(loop.snapshot.loop_id, kind, {"iteration": iteration, **metrics})

    def _observe_state(self, loop: _Loop) -> None:
        if self.metrics:
            self.metrics.observe_loop_state(loop.snapshot.loop_id, loop.snapshot.state.name)

    def _loop(self, loop_id: str) -> _Loop:
        return self._registry.get(loop_id)

    def get(self, loop_id: str) -> LoopSnapshot:
        with self._changed:
            return self._loop(loop_id).snapshot

    def list(self) -> list[LoopSnapshot]:
        with self._changed:
            return sorted((loop.snapshot for loop in self._registry.entries()), key=lambda s: -s.started_at)

    def stop(self, loop_id: str) -> LoopSnapshot:
        with self._changed:
            loop = self._loop(loop_id)
            loop.stop.set()
            return loop.snapshot

    def watch(
        self,
        loop_id: str,
        from_sequence: int | None = None,
        *,
        is_active: Callable[[], bool] = lambda: True,
        poll: float = 1.0,
    ) -> Iterator[LoopEvent]:
        """Events until the loop has ended: from now (None/0: a ``snapshot`` event with the current state, then live
        events), or the retained events from ``from_sequence`` on, then live ones (see :mod:`common.registry`)."""
        return self._registry.watch(loop_id, from_sequence, snapshot=_snapshot_event, is_active=is_active, poll=poll)

    def shutdown(self, grace: float) -> None:
        """Interrupt every loop for good (they stay resumable in the store)."""
        self.accepting = False
        self._shutting_down.set()
        self.interrupt_all(grace)

    def interrupt_all(self, grace: float) -> None:
        """Interrupt every running loop (leadership lost, or shutdown) and wait up to ``grace`` s.

        The loops' state in the store stays ``running``, so the next leader resumes them, and the jobs they have in
        flight on the workers are left running (not cancelled): the next leader's identical requests get them back.
        A loop already stopped by StopLoop stays stopped.
        """
        with self._changed:
            loops = [loop for loop in self._registry.entries() if not loop.terminal]
            for loop in loops:
                if not loop.stop.is_set():
                    loop.interrupted.set()
                    loop.stop.set()
        deadline = time.monotonic() + grace
        for loop in loops:
            if loop.thread:
                loop.thread.join(timeout=max(0.0, deadline - time.monotonic()))


def _snapshot_event(loop: _Loop) -> LoopEvent:
    """A loop's current state as the first item of a watch from now (sequence: the latest event's)."""
    return LoopEvent(loop.sequence, SNAPSHOT, loop.snapshot.iteration, loop.snapshot.stage, loop.snapshot)
