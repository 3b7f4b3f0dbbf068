"""The registry shared by the worker services' jobs and the controller's loops."""

from __future__ import annotations

import threading

import pytest

from common.errors import FailedPrecondition, InvalidArgument, NotFound
from common.registry import Entry, Registry


class Thing(Entry):
    def __init__(self, entry_id: str, *, request_id: str = "", fingerprint: str = "", history: int = 1000):
        super().__init__(entry_id, request_id=request_id, fingerprint=fingerprint, history=history)
        self.state = "running"

    @property
    def terminal(self) -> bool:
        return self.state == "done"


def make(history: int = 1000, **kwargs) -> tuple[Registry[Thing], Thing]:
    registry: Registry[Thing] = Registry(what="thing", history=history)
    thing = registry.add(Thing("t1", history=history, **kwargs))
    return registry, thing


def emit(registry: Registry, thing: Thing, n: int) -> None:
    for _ in range(n):
        registry.record(thing, lambda sequence: ("event", sequence))


def finish(registry: Registry, thing: Thing) -> None:
    with registry.changed:
        thing.state = "done"
        registry.record(thing, lambda sequence: ("ended", sequence))


def snapshot(thing: Thing):
    return ("snapshot", thing.sequence)


def test_history_is_bounded_and_sequences_keep_growing():
    registry, thing = make(history=5)
    emit(registry, thing, 12)
    assert [e.sequence for e in thing.events] == [8, 9, 10, 11, 12]
    assert [e.value for e in thing.events][-1] == ("event", 12)
    emit(registry, thing, 1)
    assert [e.sequence for e in thing.events] == [9, 10, 11, 12, 13] and thing.sequence == 13


def test_watch_from_now_starts_with_the_current_state_and_replays_nothing():
    registry, thing = make()
    emit(registry, thing, 3)
    stream = registry.watch("t1", snapshot=snapshot)
    assert next(stream) == ("snapshot", 3)
    emit(registry, thing, 1)
    finish(registry, thing)
    assert list(stream) == [("event", 4), ("ended", 5)]
    assert list(registry.watch("t1", 0, snapshot=snapshot)) == [("snapshot", 5)]  # ended: the final state alone


def test_watch_from_a_sequence_replays_from_it_then_follows_live():
    registry, thing = make()
    emit(registry, thing, 5)
    stream = registry.watch("t1", 3, snapshot=snapshot)
    assert [next(stream) for _ in range(3)] == [("event", 3), ("event", 4), ("event", 5)]
    threading.Timer(0.05, lambda: (emit(registry, thing, 1), finish(registry, thing))).start()
    assert list(stream) == [("event", 6), ("ended", 7)]


def test_watch_from_a_dropped_sequence_starts_at_the_oldest_retained():
    registry, thing = make(history=3)
    emit(registry, thing, 6)
    finish(registry, thing)
    assert list(registry.watch("t1", 1, snapshot=snapshot)) == [("event", 5), ("event", 6), ("ended", 7)]


def test_watch_past_the_end_of_an_ended_entry_is_its_final_state():
    registry, thing = make()
    emit(registry, thing, 2)
    finish(registry, thing)
    assert list(registry.watch("t1", 4, snapshot=snapshot)) == [("snapshot", 3)]
    assert list(registry.watch("t1", 3, snapshot=snapshot)) == [("ended", 3)]


def test_watch_ends_when_the_client_goes_away():
    registry, thing = make()
    active = [True]
    stream = registry.watch("t1", is_active=lambda: active[0], snapshot=snapshot, poll=0.01)
    assert next(stream) == ("snapshot", 0)
    active[0] = False
    assert list(stream) == []


def test_watch_checks_its_arguments():
    registry, _ = make()
    with pytest.raises(InvalidArgument, match="from_sequence"):
        next(registry.watch("t1", -1, snapshot=snapshot))
    with pytest.raises(NotFound, match="no thing 'nope'") as err:
        next(registry.watch("nope", snapshot=snapshot))
    assert err.value.field == "thing_id"


def test_request_ids_are_idempotent_and_a_different_fingerprint_is_an_error():
    registry, thing = make(request_id="r1", fingerprint="a")
    assert registry.existing("r1", "a") is thing
    assert registry.existing("", "a") is None and registry.existing("r2", "a") is None
    with pytest.raises(FailedPrecondition, match="request_id") as err:
        registry.existing("r1", "b")
    assert "different thing" in str(err.value)


def test_an_active_entry_is_not_replaced_but_an_ended_one_is():
    registry, thing = make()
    with pytest.raises(FailedPrecondition):
        registry.add(Thing("t1"))
    finish(registry, thing)
    again = registry.add(Thing("t1"))
    assert registry.get("t1") is again and registry.entries() == [again]


def test_wait_returns_when_terminal_or_at_the_timeout():
    registry, thing = make()
    assert registry.wait("t1", timeout=0.01) is thing and not thing.terminal
    threading.Timer(0.05, finish, args=(registry, thing)).start()
    assert registry.wait("t1", timeout=10).terminal
