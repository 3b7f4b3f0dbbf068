"""One in-memory registry for long-running things: the worker services' jobs and the controller's loops.

An :class:`Entry` has an id, the client's ``request_id`` and the fingerprint of the request that made it,
and a bounded history of events (the last ``history`` of them; older ones are dropped) numbered by a
sequence that starts at 1 and only grows. A :class:`Registry` holds the entries by id and by request id
(a reused request id with another fingerprint is FAILED_PRECONDITION naming ``request_id``), wakes
watchers through one :class:`threading.Condition` on every change, and follows an entry with
:meth:`Registry.watch` until the entry is terminal.

Watching, ``from_sequence``:

* ``None`` or ``0`` — from now: first the entry's current state (``snapshot(entry)``), then live events;
  nothing older is replayed.
* ``N > 0`` — replay the retained events with sequence >= N, then live events. When N is older than the
  oldest retained event (dropped from the bounded history), the stream starts at the oldest retained one:
  the gap is visible in the sequence numbers. A watcher that falls more than ``history`` events behind
  skips the same way. N past the latest event waits for it.

Every stream ends once the entry is terminal and its last event was yielded; when nothing at or after
N is left to replay on a terminal entry, the stream is the current (final) state alone.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from common.errors import FailedPrecondition, InvalidArgument, NotFound

#: Events an entry keeps by default.
DEFAULT_HISTORY = 1000
#: Longest request id a client may choose (ids are kept for as long as their entry).
MAX_REQUEST_ID = 256

T = TypeVar("T")
E = TypeVar("E", bound="Entry")


@dataclass(frozen=True)
class Event(Generic[T]):
    """One retained event: its sequence within the entry and what the owner recorded."""

    sequence: int
    value: T


class Entry:
    """One registered thing. Owners subclass it, add their state, and define :attr:`terminal`."""

    def __init__(self, entry_id: str, *, request_id: str = "", fingerprint: str = "", history: int = DEFAULT_HISTORY):
        self.id = entry_id
        self.request_id = request_id
        self.fingerprint = fingerprint
        #: The last ``history`` events, oldest first.
        self.events: deque[Event] = deque(maxlen=history)
        #: When the latest event was recorded (monotonic): a terminal entry older than the registry's TTL expires.
        self.updated_at = time.monotonic()
        #: Sequence of the latest event (0 before the first).
        self.sequence = 0

    @property
    def terminal(self) -> bool:
        """True once the entry has ended: no event follows, watches end."""
        raise NotImplementedError


class Registry(Generic[E]):
    """Entries by id and by request id, with one condition for every change (owners may hold it: it is re-entrant)."""

    def __init__(
        self,
        *,
        what: str,
        history: int = DEFAULT_HISTORY,
        not_found: Callable[[str], str] | None = None,
        ttl_seconds: float | None = None,
    ):
        if history < 1:
            raise ValueError(f"history must be >= 1, got {history}")
        self.what = what
        self.history = history
        #: Ended entries are forgotten this long after their last event (None: kept); their results stay in the store.
        self.ttl_seconds = ttl_seconds
        self._not_found = not_found or (lambda entry_id: f"no {what} {entry_id!r}")
        self._entries: dict[str, E] = {}
        self._by_request: dict[str, str] = {}
        self.changed = threading.Condition(threading.RLock())

    # -- registry ------------------------------------------------------------------------

    def existing(self, request_id: str, fingerprint: str, *, conflict: str | None = None) -> E | None:
        """The entry a request id made, if any; the same id with another fingerprint is FAILED_PRECONDITION, and an
        id longer than :data:`MAX_REQUEST_ID` or with unprintable characters is INVALID_ARGUMENT."""
        if len(request_id) > MAX_REQUEST_ID or not request_id.isprintable():
            raise InvalidArgument(
                f"must be at most {MAX_REQUEST_ID} printable characters (got {len(request_id)})", field="request_id"
            )
        with self.changed:
            if not request_id or request_id not in self._by_request:
                return None
            entry = self._entries[self._by_request[request_id]]
            if entry.fingerprint != fingerprint:
                conflict = conflict or f"was already used for a different {self.what}"
                raise FailedPrecondition(conflict, field="request_id")
            return entry

    def add(self, entry: E) -> E:
        """Register ``entry`` (replacing an ended entry of the same id, e.g. a resumed loop)."""
        with self.changed:
            current = self._entries.get(entry.id)
            if current is not None and current is not entry and not current.terminal:
                raise FailedPrecondition(f"{self.what} {entry.id!r} is still active", field="id")
            self.expire()
            self._entries[entry.id] = entry
            if entry.request_id:
                self._by_request[entry.request_id] = entry.id
            self.changed.notify_all()
        return entry

    def expire(self, now: float | None = None) -> list[str]:
        """Forget the ended entries whose last event is older than the TTL; returns their ids."""
        if self.ttl_seconds is None:
            return []
        now = time.monotonic() if now is None else now
        with self.changed:
            gone = [e.id for e in self._entries.values() if e.terminal and now - e.updated_at > self.ttl_seconds]
            for entry_id in gone:
                entry = self._entries.pop(entry_id)
                if self._by_request.get(entry.request_id) == entry_id:
                    del self._by_request[entry.request_id]
            return gone

    def get(self, entry_id: str) -> E:
        with self.changed:
            entry = self._entries.get(entry_id)
            if entry is None:
                raise NotFound(self._not_found(entry_id), field=f"{self.what}_id")
            return entry

    def __contains__(self, entry_id: str) -> bool:
        with self.changed:
            return entry_id in self._entries

    def entries(self) -> list[E]:
        with self.changed:
            return list(self._entries.values())

    # -- events --------------------------------------------------------------------------

    def record(self, entry: E, make: Callable[[int], T]) -> T:
        """Append the event ``make(sequence)`` to the entry's history (the oldest drops past ``history``)
        and wake every watcher; returns the event's value."""
        with self.changed:
            sequence = entry.sequence + 1
            value = make(sequence)
            entry.events.append(Event(sequence, value))
            entry.sequence = sequence
            entry.updated_at = time.monotonic()
            self.changed.notify_all()
            return value

    def notify(self) -> None:
        """Wake watchers after a change that is not an event (e.g. an entry became terminal)."""
        with self.changed:
            self.changed.notify_all()

    def watch(
        self,
        entry_id: str,
        from_sequence: int | None = None,
        *,
        snapshot: Callable[[E], Any],
        is_active: Callable[[], bool] = lambda: True,
        poll: float = 1.0,
    ) -> Iterator[Any]:
        """The entry's current state then live events (``from_sequence`` None/0), or retained events from
        ``from_sequence`` then live ones; ends when the entry is terminal (see the module docstring)."""
        if from_sequence is not None and from_sequence < 0:
            raise InvalidArgument(f"must be >= 0, got {from_sequence}", field="from_sequence")
        with self.changed:
            entry = self.get(entry_id)  # followed by object: a later entry of the same id is another stream
            if not from_sequence:
                current, next_sequence, ended = snapshot(entry), entry.sequence + 1, entry.terminal
            else:
                next_sequence = from_sequence
                current, ended = None, False
        if current is not None:
            yield current
            if ended:
                return
        replayed = False
        while True:
            with self.changed:
                while entry.sequence < next_sequence and not entry.terminal and is_active():
                    # Timed wait only to notice a client that went away; changes wake us at once.
                    self.changed.wait(timeout=poll)
                pending = [event for event in entry.events if event.sequence >= next_sequence]
                ended = entry.terminal
                latest = entry.sequence
                final = snapshot(entry) if ended and not pending and current is None and not replayed else None
            if not is_active():
                return
            if final is not None:  # asked to replay from past the end of an ended entry: its final state
                yield final
                return
            for event in pending:
                yield event.value
                next_sequence = event.sequence + 1
                replayed = True
            if ended and next_sequence > latest:
                return

    def wait(self, entry_id: str, timeout: float | None = None) -> E:
        """Block until the entry is terminal (or ``timeout`` s passed); returns it."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self.changed:
            entry = self.get(entry_id)
            while not entry.terminal:
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    break
                self.changed.wait(timeout=remaining)
            return entry
