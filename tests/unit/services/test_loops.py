"""The controller's LoopManager over the shared registry, with a scripted stand-in for LoopRunner."""

from __future__ import annotations

import re
import threading
from pathlib import Path

import pytest

from common.artifacts import LocalArtifactStore
from common.errors import FailedPrecondition, InvalidArgument, NotFound
from montessori.v1 import controller_pb2
from services.controller import loops as loops_module
from services.controller.loops import EVENT_KINDS, LoopManager, LoopState

REPO = Path(__file__).resolve().parents[3]


class FakeRunner:
    """What LoopManager needs of a LoopRunner: ``prefix``, ``prepare()`` and ``run()``, which emits ``script``'s
    events (the real runner's loops are in tests/integration/test_loop.py and test_services.py)."""

    script: list = []
    gate: threading.Event | None = None
    crash: Exception | None = None

    def __init__(self, config, *, store, executor, loop_id, state_extra, interrupted, on_event, should_stop):
        self.loop_id, self.on_event, self.should_stop = loop_id, on_event, should_stop
        self.prefix = f"loops/{loop_id}"

    def prepare(self) -> None:
        pass

    def run(self) -> dict:
        for i, (kind, iteration, stage) in enumerate(self.script):
            if i == 1 and self.gate is not None:
                assert self.gate.wait(10)
            self.on_event(kind, iteration, stage, metrics={"i": float(i)})
        if self.crash is not None:
            raise self.crash
        return {"stopped": False, "summary_uri": "file:///summary.json", "summary_sha256": "0" * 64}


@pytest.fixture
def manager(tmp_path, monkeypatch):
    def make(*, script=(), gate=None, crash=None, history=1000) -> LoopManager:
        runner = type("Runner", (FakeRunner,), {"script": list(script), "gate": gate, "crash": crash})
        monkeypatch.setattr(loops_module, "LoopRunner", runner)
        return LoopManager(LocalArtifactStore(tmp_path), lambda loop_id: None, history=history)

    return make


def stage(k: int) -> list:
    return [("stage_started", k, "scores"), ("stage_finished", k, "scores")]


def test_a_loop_runs_and_its_events_carry_enum_kinds__scripted_runner(manager):
    loops = manager(script=[*stage(1), ("round_finished", 1, "round"), ("loop_finished", 0, "loop")])
    assert loops.start(None, request_id="r", fingerprint="f", loop_id="L").loop_id == "L"
    events = list(loops.watch("L", 1))
    assert [e.sequence for e in events] == [1, 2, 3, 4, 5]
    assert [e.to_proto().kind for e in events] == [
        controller_pb2.LOOP_EVENT_KIND_STAGE_STARTED,
        controller_pb2.LOOP_EVENT_KIND_STAGE_FINISHED,
        controller_pb2.LOOP_EVENT_KIND_ROUND_FINISHED,
        controller_pb2.LOOP_EVENT_KIND_LOOP_FINISHED,
        controller_pb2.LOOP_EVENT_KIND_LOOP_ENDED,
    ]
    final = loops.get("L")
    assert final.state is LoopState.SUCCEEDED and final.rounds_completed == 1 and events[-1].loop == final
    assert events[-1].to_proto().loop.state == controller_pb2.LOOP_STATE_SUCCEEDED


def test_watch_from_now_starts_with_a_snapshot_and_does_not_replay__scripted_runner(manager):
    gate = threading.Event()
    loops = manager(script=stage(1) + stage(2), gate=gate)
    loops.start(None, request_id="", fingerprint="", loop_id="L")
    first = next(loops.watch("L", 1))  # the first event is out; the runner waits at the gate
    assert first.sequence == 1 and first.kind == "stage_started"
    stream = loops.watch("L")
    snapshot = next(stream)
    assert snapshot.kind == "snapshot" and snapshot.sequence == 1 and snapshot.loop.stage == "iter-1/scores"
    assert snapshot.to_proto().kind == controller_pb2.LOOP_EVENT_KIND_SNAPSHOT
    gate.set()
    rest = list(stream)
    assert [e.sequence for e in rest] == [2, 3, 4, 5] and rest[-1].kind == "loop_ended"
    assert [e.kind for e in loops.watch("L", 0)] == ["snapshot"]  # ended: its final state alone
    assert next(loops.watch("L")).loop.state is LoopState.SUCCEEDED


def test_watch_from_a_sequence_replays_from_it__scripted_runner(manager):
    loops = manager(script=stage(1) + stage(2))
    loops.start(None, request_id="", fingerprint="", loop_id="L")
    assert [e.sequence for e in loops.watch("L", 3)] == [3, 4, 5]
    assert [(e.kind, e.iteration) for e in loops.watch("L", 3)][:2] == [("stage_started", 2), ("stage_finished", 2)]


def test_the_event_history_is_bounded__scripted_runner(manager):
    loops = manager(script=[("progress", 1, "scores")] * 30, history=10)
    loops.start(None, request_id="", fingerprint="", loop_id="L")
    events = list(loops.watch("L", 1))  # 1 is long gone: from the oldest kept
    assert [e.sequence for e in events] == list(range(22, 32)) and events[-1].kind == "loop_ended"


def test_a_request_id_with_another_spec_is_an_error__scripted_runner(manager):
    gate = threading.Event()
    loops = manager(script=stage(1), gate=gate)
    first = loops.start(None, request_id="r", fingerprint="a", loop_id="L")
    assert loops.start(None, request_id="r", fingerprint="a").loop_id == first.loop_id
    with pytest.raises(FailedPrecondition, match="request_id") as err:
        loops.start(None, request_id="r", fingerprint="b")
    assert "different loop spec" in str(err.value)
    gate.set()
    assert [s.loop_id for s in loops.list()] == ["L"]


def test_a_crash_ends_failed_with_a_message__scripted_runner(manager):
    loops = manager(script=stage(1)[:1], crash=ZeroDivisionError("secret"))
    loops.start(None, request_id="", fingerprint="", loop_id="L")
    last = list(loops.watch("L", 1))[-1]
    assert last.kind == "loop_ended" and last.loop.state is LoopState.FAILED
    assert "ZeroDivisionError" in last.loop.error_message and "secret" not in last.loop.error_message
    assert loops.get("L").state is LoopState.FAILED


def test_a_resumed_loop_replaces_its_ended_entry_despite_its_request_id__scripted_runner(manager):
    loops = manager(script=stage(1))
    loops.start(None, request_id="r", fingerprint="f", loop_id="L")
    old = list(loops.watch("L", 1))
    ended = loops._registry.get("L")
    loops.start(None, request_id="r", fingerprint="f", loop_id="L")  # what resume_all does
    assert loops._registry.get("L") is not ended  # started again, not the ended loop handed back
    assert [e.sequence for e in loops.watch("L", 1)] == [e.sequence for e in old]  # a fresh history


def test_unknown_loops_and_bad_sequences__scripted_runner(manager):
    loops = manager()
    with pytest.raises(NotFound, match="loop_id"):
        next(loops.watch("nope"))
    loops.start(None, request_id="", fingerprint="", loop_id="L")
    with pytest.raises(InvalidArgument, match="from_sequence"):
        next(loops.watch("L", -1))


def test_the_watch_loop_rpc_passes_from_sequence__scripted_runner(manager):
    from services.controller.servicer import ControllerServicer

    class Context:
        def is_active(self):
            return True

    loops = manager(script=stage(1))
    loops.start(None, request_id="", fingerprint="", loop_id="L")
    servicer = ControllerServicer(None, loops)
    request = controller_pb2.WatchLoopRequest(loop_id="L", from_sequence=2)
    replay = [r.event for r in servicer.WatchLoop(request, Context())]
    assert [(e.sequence, e.kind) for e in replay] == [
        (2, controller_pb2.LOOP_EVENT_KIND_STAGE_FINISHED),
        (3, controller_pb2.LOOP_EVENT_KIND_LOOP_ENDED),
    ]
    now = [r.event for r in servicer.WatchLoop(controller_pb2.WatchLoopRequest(loop_id="L"), Context())]
    assert [(e.sequence, e.kind) for e in now] == [(3, controller_pb2.LOOP_EVENT_KIND_SNAPSHOT)]


def test_every_kind_the_loop_runner_emits_has_a_wire_enum():
    """The runner's on_event("...") kinds (loop.py, evaluation.py) all map to a LoopEventKind."""
    sources = [REPO / "services" / "controller" / name for name in ("loop.py", "evaluation.py")]
    used = {kind for path in sources if path.exists() for kind in re.findall(r'on_event\(\s*"(\w+)"', path.read_text())}
    assert {"stage_started", "stage_finished", "progress", "round_finished"} <= used
    assert used <= set(EVENT_KINDS)
    assert controller_pb2.LOOP_EVENT_KIND_UNSPECIFIED not in EVENT_KINDS.values()
    wire = set(controller_pb2.LoopEventKind.values()) - {controller_pb2.LOOP_EVENT_KIND_UNSPECIFIED}
    assert set(EVENT_KINDS.values()) == wire
