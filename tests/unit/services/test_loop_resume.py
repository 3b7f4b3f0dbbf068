"""Resume is level-triggered (issue 22, finding 3): a loop the store says is running is resumed even when a worker
answers late, and while it waits GetLoop/ListLoops show it waiting, naming the worker. Scripted runners stand in for
LoopRunner (its checks are the workers' ``validate_only`` requests; the real ones are in tests/integration)."""

from __future__ import annotations

import threading
import time
from types import SimpleNamespace

import grpc
import pytest

from common.artifacts import LocalArtifactStore
from common.config import to_dict
from common.errors import Unavailable
from montessori.v1 import controller_pb2
from services.controller import loops as loops_module
from services.controller.config import RunConfig
from services.controller.loops import LoopManager, LoopState

TEACHER_DOWN = "teacher service at 127.0.0.1:50051: no answer within 120 s"


class LateWorkers:
    """A runner whose checks (``prepare``) fail as a teacher that is not up yet does, until ``up`` is set."""

    up = threading.Event()
    checks = 0

    def __init__(self, config, *, store, executor, loop_id, state_extra, interrupted, on_event, should_stop):
        self.store, self.loop_id, self.on_event = store, loop_id, on_event
        self.prefix = f"loops/{loop_id}"

    def prepare(self) -> None:
        type(self).checks += 1
        if not self.up.is_set():
            raise Unavailable(TEACHER_DOWN)

    def run(self) -> dict:
        self.on_event("stage_started", 1, "warmup-data")
        self.on_event("stage_finished", 1, "warmup-data")
        return {"stopped": False, "summary_uri": "file:///summary.json", "summary_sha256": "0" * 64}

    def record_stopped(self) -> None:
        state = self.store.get_json(f"{self.prefix}/state.json")
        self.store.put_json(f"{self.prefix}/state.json", {**state, "status": "stopped"})


class NoExecutor:
    """The scripted runner does not use an executor; the manager closes it when the loop ends."""

    def __init__(self, loop_id: str):
        self.loop_id = loop_id

    def close(self) -> None:
        pass


@pytest.fixture
def resumable(tmp_path, monkeypatch):
    """A store holding one loop that a controller was running when it went away, and a manager for it."""
    runner = type("Runner", (LateWorkers,), {"up": threading.Event(), "checks": 0})
    monkeypatch.setattr(loops_module, "LoopRunner", runner)
    store = LocalArtifactStore(tmp_path)
    state = {
        "status": "running",
        "config": to_dict(RunConfig()),
        "stages": {},
        "request_id": "r",
        "request_fingerprint": "f",
    }
    store.put_json("loops/L/state.json", state)
    manager = LoopManager(store, NoExecutor, retry_seconds=0.05, max_retry_seconds=0.2)
    return manager, runner, store


def wait_for(predicate, timeout: float = 10.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.02)
    raise AssertionError("timed out")


def test_a_loop_whose_worker_answers_late_is_shown_waiting_then_resumed(resumable):
    loops, runner, _ = resumable
    assert loops.resume_all() == ["L"]
    wait_for(lambda: runner.checks >= 3)  # checked again and again, not given up after one try
    waiting = loops.get("L")
    assert waiting.state is LoopState.RUNNING and waiting.waiting_for == TEACHER_DOWN
    shown = [loop.to_proto() for loop in loops.list()]  # what ListLoops / GetLoop send
    assert [(loop.loop_id, loop.state, loop.waiting_for) for loop in shown] == [
        ("L", controller_pb2.LOOP_STATE_RUNNING, TEACHER_DOWN)
    ]
    assert loops.resume_all() == []  # a loop that waits is not started twice
    runner.up.set()
    events = list(loops.watch("L", 1))
    assert events[-1].loop.state is LoopState.SUCCEEDED and events[-1].loop.waiting_for == ""
    assert [e.kind for e in events] == ["stage_started", "stage_finished", "loop_ended"]


def test_a_loop_stopped_while_it_waits_is_recorded_stopped_and_not_resumed_again(resumable):
    loops, runner, store = resumable
    loops.resume_all()
    wait_for(lambda: loops.get("L").waiting_for == TEACHER_DOWN)
    loops.stop("L")
    assert loops._registry.wait("L", timeout=10).snapshot.state is LoopState.STOPPED
    assert store.get_json("loops/L/state.json")["status"] == "stopped"
    assert LoopManager(store, NoExecutor).resume_all() == []


def test_a_loop_that_waits_when_the_controller_stops_stays_resumable(resumable):
    loops, runner, store = resumable
    loops.resume_all()
    wait_for(lambda: loops.get("L").waiting_for == TEACHER_DOWN)
    loops.shutdown(grace=10)
    final = loops.get("L")
    assert final.state is LoopState.STOPPED and "resumes it" in final.error_message
    assert store.get_json("loops/L/state.json")["status"] == "running"


class Loading(grpc.RpcError):
    """What a worker that is still loading its models answers a submit."""

    def code(self):
        return grpc.StatusCode.UNAVAILABLE

    def details(self):
        return "the service is still loading models; retry when health is SERVING"

    def trailing_metadata(self):
        return None


def test_a_worker_that_takes_long_to_come_back_is_asked_again_for_the_submit_timeout(monkeypatch):
    """A running loop's worker that restarts slowly (it refuses submits while it loads) has lost no job: the submit
    is retried for ``submit_timeout`` s, not ``attempts`` times (about 30 s in all, which a busy node exceeds)."""
    from services.controller import remote

    slept: list[float] = []
    monkeypatch.setattr(remote.time, "sleep", slept.append)
    unused = "127.0.0.1:9"
    executor = remote.RemoteExecutor(None, remote.WorkerAddresses(*[unused] * 4), request_prefix="L", attempts=5)
    refusals = iter(range(8))

    def submit(request, *, wait_for_ready, timeout):
        if next(refusals, None) is not None:
            raise Loading()
        return SimpleNamespace(job="the job")

    try:
        assert executor._submit("teacher", submit, None) == "the job"
        assert len(slept) == 8 and max(slept) == 30.0  # more refusals than attempts, each waited for
        executor.submit_timeout = 0.0
        refusals = iter(range(1))
        with pytest.raises(Unavailable, match="did not take the job within 0 s"):
            executor._submit("teacher", submit, None)
    finally:
        executor.close()
