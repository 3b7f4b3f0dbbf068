"""Loops run by the controller service: each in its own thread, with a state, an event log
for watchers, and a stop flag. Several loops may run at once; the worker services queue
their jobs."""
from __future__ import annotations

import threading
import time
import uuid
from dataclasses import dataclass, field, replace
from enum import Enum
from typing import Callable, Iterator

from common.artifacts import ArtifactRef, ArtifactStore
from common.errors import Cancelled, FailedPrecondition, MontessoriError, NotFound, Unavailable
from common.logs import get_logger
from common.metrics import ServiceMetrics
from montessori.v1 import common_pb2, controller_pb2
from services.controller.config import RunConfig
from services.controller.executor import StageExecutor
from services.controller.loop import STATE, LoopRunner, new_loop_id

log = get_logger(__name__)


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

    def to_proto(self) -> controller_pb2.Loop:
        message = controller_pb2.Loop(
            loop_id=self.loop_id, state=self.state.value, iteration=self.iteration, stage=self.stage,
            rounds_completed=self.rounds_completed, error_message=self.error_message,
            age_seconds=time.time() - self.started_at, store_uri=self.store_uri)
        if self.summary:
            message.summary.CopyFrom(common_pb2.ArtifactRef(uri=self.summary.uri, sha256=self.summary.sha256))
        return message


@dataclass(frozen=True)
class LoopEvent:
    sequence: int
    kind: str
    iteration: int
    stage: str
    loop: LoopSnapshot
    metrics: dict[str, float] = field(default_factory=dict)
    progress: tuple | None = None  # (label, done, total, metrics)

    def to_proto(self) -> controller_pb2.LoopEvent:
        message = controller_pb2.LoopEvent(sequence=self.sequence, kind=self.kind, iteration=self.iteration, stage=self.stage,
                                           metrics=self.metrics, loop=self.loop.to_proto())
        if self.progress:
            label, done, total, metrics = self.progress
            message.progress.CopyFrom(common_pb2.Progress(
                stage=label, done=done, total=total,
                metrics={k: float(v) for k, v in metrics.items() if isinstance(v, (int, float))}))
        return message


class _Loop:
    def __init__(self, snapshot: LoopSnapshot, request_id: str, fingerprint: str):
        self.snapshot = snapshot
        self.request_id = request_id
        self.fingerprint = fingerprint
        self.events: list[LoopEvent] = []
        self.stop = threading.Event()
        self.thread: threading.Thread | None = None


class LoopManager:
    """All loops of this controller."""

    def __init__(self, store: ArtifactStore, executor_factory: Callable[[str], StageExecutor]):
        self.store = store
        self.executor_factory = executor_factory
        self._loops: dict[str, _Loop] = {}
        self._by_request: dict[str, str] = {}
        self._changed = threading.Condition()
        self._shutting_down = threading.Event()
        #: False on a controller replica that does not hold the leader lease.
        self.accepting = True
        #: The service's metrics (set by servicer.build): loop events and states feed its loop gauges.
        self.metrics: ServiceMetrics | None = None

    def start(self, config: RunConfig, *, request_id: str, fingerprint: str, loop_id: str | None = None) -> LoopSnapshot:
        if not self.accepting:
            raise Unavailable("this controller replica is not the leader; retry (the Service routes to the leader)")
        with self._changed:
            if request_id and request_id in self._by_request:
                existing = self._loops[self._by_request[request_id]]
                if existing.fingerprint != fingerprint:
                    raise FailedPrecondition("was already used for a different loop spec", field="request_id")
                return existing.snapshot
            if loop_id is None:
                loop_id = new_loop_id(config)
                if loop_id in self._loops or self.store.exists(f"loops/{loop_id}/{STATE}"):
                    loop_id = f"{loop_id}-{uuid.uuid4().hex[:6]}"
        executor = self.executor_factory(loop_id)
        loop_holder: dict = {}
        runner = LoopRunner(config, store=self.store, executor=executor, loop_id=loop_id,
                            state_extra={"request_id": request_id, "request_fingerprint": fingerprint},
                            interrupted=lambda: self._shutting_down.is_set(),
                            on_event=lambda kind, iteration, stage, metrics=None, progress=None:
                            self._event(loop_holder["loop"], kind, iteration, stage, metrics or {}, progress),
                            should_stop=lambda: loop_holder["loop"].stop.is_set())
        loop = _Loop(LoopSnapshot(loop_id, LoopState.RUNNING, self.store.uri(runner.prefix), time.time()), request_id, fingerprint)
        loop_holder["loop"] = loop
        with self._changed:
            self._loops[loop_id] = loop
            if request_id:
                self._by_request[request_id] = loop_id
        self._observe_state(loop)
        loop.thread = threading.Thread(target=self._run, args=(loop, runner, executor), name=f"loop-{loop_id}", daemon=True)
        loop.thread.start()
        log.info("loop accepted", extra={"loop_id": loop_id, "stage": "controller"})
        return loop.snapshot

    def resume_all(self) -> list[str]:
        """Pick up every loop the store says is still running (after a restart, here or on another machine)."""
        from common.config import from_dict

        resumed = []
        for key in self.store.list("loops"):
            if not key.endswith(f"/{STATE}") or key.count("/") != 2:
                continue
            state = self.store.get_json(key)
            current = self._loops.get(state["loop_id"])
            if state.get("status") != "running" or (current and current.snapshot.state is LoopState.RUNNING):
                continue
            try:
                config = from_dict(RunConfig, state["config"])
                self.start(config, request_id=state.get("request_id", ""), fingerprint=state.get("request_fingerprint", ""),
                           loop_id=state["loop_id"])
                resumed.append(state["loop_id"])
            except MontessoriError as err:
                log.error("cannot resume loop", extra={"loop_id": state["loop_id"], "stage": "controller",
                                                       "metrics": {"error": str(err)}})
        if resumed:
            log.info("loops resumed", extra={"stage": "controller", "metrics": {"loops": resumed}})
        return resumed

    def _run(self, loop: _Loop, runner: LoopRunner, executor) -> None:
        try:
            summary = runner.run()
            state = LoopState.STOPPED if summary["stopped"] else LoopState.SUCCEEDED
            final = {"state": state, "summary": ArtifactRef(summary["summary_uri"], summary["summary_sha256"])}
        except Cancelled:  # interrupted by shutdown; the store still says running
            final = {"state": LoopState.STOPPED, "error_message": "interrupted by controller shutdown; resumes on restart"}
        except MontessoriError as err:
            final = {"state": LoopState.FAILED, "error_message": str(err)}
        except Exception as err:  # noqa: BLE001 - the loop must end in a state, whatever happened
            log.exception("loop crashed", extra={"loop_id": loop.snapshot.loop_id, "stage": "controller"})
            final = {"state": LoopState.FAILED, "error_message": f"internal error ({type(err).__name__}); see the controller log"}
        finally:
            close = getattr(executor, "close", None)
            if close:
                close()
        with self._changed:
            loop.snapshot = replace(loop.snapshot, stage="", **final)
            self._append(loop, "loop_ended", 0, "loop", {}, None)
        self._observe_state(loop)

    def _append(self, loop: _Loop, kind: str, iteration: int, stage: str, metrics: dict, progress) -> None:
        loop.events.append(LoopEvent(len(loop.events) + 1, kind, iteration, stage, loop.snapshot, metrics, progress))
        self._changed.notify_all()

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
        loop = self._loops.get(loop_id)
        if loop is None:
            raise NotFound(f"no loop {loop_id!r}", field="loop_id")
        return loop

    def get(self, loop_id: str) -> LoopSnapshot:
        with self._changed:
            return self._loop(loop_id).snapshot

    def list(self) -> list[LoopSnapshot]:
        with self._changed:
            return sorted((l.snapshot for l in self._loops.values()), key=lambda s: -s.started_at)

    def stop(self, loop_id: str) -> LoopSnapshot:
        with self._changed:
            loop = self._loop(loop_id)
            loop.stop.set()
            return loop.snapshot

    def watch(self, loop_id: str, *, is_active: Callable[[], bool] = lambda: True, poll: float = 1.0) -> Iterator[LoopEvent]:
        """Every event from the first, then live ones, until the loop has ended."""
        sent = 0
        while True:
            with self._changed:
                loop = self._loop(loop_id)
                while sent == len(loop.events) and loop.snapshot.state is LoopState.RUNNING and is_active():
                    self._changed.wait(timeout=poll)
                pending = loop.events[sent:]
                ended = loop.snapshot.state is not LoopState.RUNNING
            if not is_active():
                return
            for event in pending:
                yield event
            sent += len(pending)
            if ended and sent == len(loop.events):
                return

    def shutdown(self, grace: float) -> None:
        """Interrupt every loop for good (they stay resumable in the store)."""
        self.accepting = False
        self.interrupt_all(grace, final=True)

    def interrupt_all(self, grace: float, *, final: bool = False) -> None:
        """Interrupt every running loop (leadership lost, or shutdown) and wait up to ``grace`` s.

        The loops' state in the store stays ``running``, so the next leader resumes them.
        """
        self._shutting_down.set()
        for loop in list(self._loops.values()):
            loop.stop.set()
        deadline = time.monotonic() + grace
        for loop in list(self._loops.values()):
            if loop.thread:
                loop.thread.join(timeout=max(0.0, deadline - time.monotonic()))
        if not final:
            self._shutting_down.clear()
