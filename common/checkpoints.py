"""Checkpoints of a long stage in the artifact store, so that a restarted job continues where it stopped.

A stage that publishes under ``<prefix>`` keeps its checkpoint beside it, under ``<prefix>-checkpoint`` (a sibling,
not a hidden key: gc sees it), and deletes it once its outputs and manifest are published. The checkpoint lives in
the store, not on the node: after a preemption the controller re-sends the same request, perhaps to another node,
and the worker finds the checkpoint from the request alone.

Layout: the parts of version ``n`` (files or folders) under ``<prefix>-checkpoint/v<n>/``, then ``state.json``,
which names the work (a digest of the request and of the inputs read), the version and each part's SHA-256. The
state is written after its parts and the previous version is deleted after the state, so a job stopped at any
moment leaves a state whose parts exist. A checkpoint of other work, or one whose parts do not match their digests,
is deleted and the work starts over: a checkpoint saves time, it never fails a job.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Generic, TypeVar

from common.artifacts import ArtifactStore
from common.errors import Cancelled, MontessoriError
from common.logs import get_logger

#: The checkpoint of the stage publishing under ``<prefix>`` is ``<prefix>`` + this.
SUFFIX = "-checkpoint"
#: Written last: the work, the version and each part's digest.
STATE = "state.json"

T = TypeVar("T")
log = get_logger(__name__)


def work_digest(**parts: Any) -> str:
    """Digest of what identifies a unit of work (request digest, input digests, settings), JSON with sorted keys."""
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()


@dataclass(frozen=True)
class Restored(Generic[T]):
    """A verified checkpoint: what ``load`` made of its parts, and the counts the stage recorded with them."""

    value: T
    meta: dict


class StageCheckpoint:
    """The checkpoint of one unit of work: ``restore`` it once, ``save`` new versions, ``remove`` it when published."""

    def __init__(self, store: ArtifactStore, prefix: str, work: str, *, stage: str):
        self.store = store
        self.key = f"{prefix}{SUFFIX}"
        self.work = work
        self.stage = stage
        self.version = 0  # the version state.json names (0: none saved or restored)

    def _part(self, version: int, name: str) -> str:
        return f"{self.key}/v{version}/{name}"

    def restore(self, load: Callable[[dict[str, Path]], T]) -> Restored[T] | None:
        """The checkpoint of this work, its parts (local, verified paths by name) turned into a value by ``load``;
        None when there is none. One of other work, unreadable, or whose parts do not match their digests (or that
        ``load`` rejects with an exception) is deleted, with a warning, and None returned."""
        state_key = f"{self.key}/{STATE}"
        try:
            if not self.store.exists(state_key):
                self.remove()  # parts of a first version whose state was never written
                return None
            state = self.store.get_json(state_key)
            if state.get("work") != self.work:
                reason = "written for other work (another request or other inputs)"
            else:
                version, parts = int(state["version"]), {}
                for name, digest in sorted(state["parts"].items()):
                    key = self._part(version, name)
                    if self.store.digest(key) != digest:
                        reason = f"part {name} does not match its digest"
                        break
                    parts[name] = self.store.local_path(key)
                else:
                    value = load(parts)
                    self.version = version
                    meta = dict(state.get("meta", {}))
                    log.info("resumed from checkpoint", extra={"stage": self.stage, "metrics": meta})
                    return Restored(value, meta)
        except Cancelled:
            raise
        except (MontessoriError, OSError, ValueError, KeyError, TypeError, AttributeError) as err:
            reason = f"unreadable ({type(err).__name__}: {err})"
        log.warning(f"checkpoint discarded: {reason}", extra={"stage": self.stage, "metrics": {"key": self.key}})
        self.version = 0
        self.remove()
        return None

    def save(self, parts: dict[str, list[dict] | Path], meta: dict, *, move: bool = False) -> bool:
        """Write a new version: JSONL parts (lists of rows) and folder parts (paths; ``move``: the store may consume
        them), then the state naming them, then delete the previous version. A store error is a warning (False),
        not a failed job: the work goes on and the next save tries again."""
        version = self.version + 1
        try:
            digests = {}
            for name, content in parts.items():
                key = self._part(version, name)
                if isinstance(content, Path):
                    ref = self.store.put_dir(key, content, move=move)
                else:
                    ref = self.store.put_jsonl(key, content)
                digests[name] = ref.sha256
            state = {"work": self.work, "stage": self.stage, "version": version, "parts": digests, "meta": meta}
            self.store.put_json(f"{self.key}/{STATE}", state)
        except (MontessoriError, OSError) as err:
            log.warning(f"checkpoint not saved ({err})", extra={"stage": self.stage, "metrics": {"key": self.key}})
            return False
        previous, self.version = self.version, version
        if previous:
            self._delete_versions(keep=version)
        return True

    def _delete_versions(self, *, keep: int | None = None) -> None:
        """Delete every version folder but ``keep``, part by part: a folder part is deleted by its own key, so that
        a store that indexes folders (S3) removes its index with it."""
        parts = set()
        for key in self.store.list(self.key):
            segments = key[len(self.key) + 1 :].split("/")
            if len(segments) >= 2 and segments[0].startswith("v") and segments[0][1:].isdigit():
                parts.add((int(segments[0][1:]), segments[1]))
        for version, name in sorted(parts):
            if version != keep:
                self.store.delete(self._part(version, name))

    def remove(self) -> None:
        """Delete the checkpoint (nothing when there is none); a store error is a warning (gc sees the key)."""
        try:
            if not self.store.list(self.key):
                return
            self._delete_versions()
            self.store.delete(self.key)
        except (MontessoriError, OSError) as err:
            log.warning(f"checkpoint not deleted ({err})", extra={"stage": self.stage, "metrics": {"key": self.key}})
        self.version = 0
