"""Where a report's data comes from: a loop's summary read by loop id from an artifact store, or from a summary.json
path / file:// / s3:// URI (a loop still running has no summary.json, so its summary is built from ``rounds.jsonl``);
the summaries of an experiment's loops; and the rows of a JSONL artifact (such as a round's scores), which a report
shows when it can and otherwise says why not.
"""

from __future__ import annotations

import json
from pathlib import Path
from urllib.parse import unquote

from common.errors import InvalidArgument, MontessoriError, NotFound


def load_summary(source: str, artifacts: str | None = None):
    """``(summary, store)`` for a loop id (read from ``artifacts``) or a summary.json path / file:// / s3:// URI.

    A loop that has not finished has no summary.json yet: its summary is built from ``rounds.jsonl``.
    ``store`` is where the summary's artifact URIs (scores) are read from, or ``None`` (read file:// URIs directly).
    """
    if "://" in source or source.endswith(".json") or Path(source).is_file():
        return _summary_from_uri(source)
    return _summary_from_loop(source, artifacts)


def _summary_from_uri(source: str):
    from common.artifacts import LocalArtifactStore, open_store, validate_key

    if source.startswith("s3://"):
        bucket, _, key = source.removeprefix("s3://").partition("/")
        if not bucket or not key:
            raise InvalidArgument(f"expected s3://<bucket>/<key of summary.json>, got {source!r}", field="summary")
        store = open_store(f"s3://{bucket}")
        key = validate_key(key, field="summary")
        if not store.exists(key):
            raise NotFound(f"no summary at {source}", field="summary")
        return _checked(json.loads(store.get_bytes(key)), source), store
    if "://" in source and not source.startswith("file://"):
        raise InvalidArgument(f"unsupported summary URI {source!r} (use a path, file:// or s3://)", field="summary")
    path = Path(unquote(source.removeprefix("file://"))).resolve()
    if not path.is_file():
        raise NotFound(f"no summary file {path}", field="summary")
    try:
        summary = _checked(json.loads(path.read_text(encoding="utf-8")), source)
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise InvalidArgument(f"{path}: not a JSON summary ({err})", field="summary") from None
    # <root>/loops/<id>/summary.json: open the store at <root> so reads are digest-checked.
    store = LocalArtifactStore(path.parents[2]) if path.parent.parent.name == "loops" else None
    return summary, store


def _summary_from_loop(loop_id: str, artifacts: str | None):
    from common.artifacts import open_store, validate_key
    from common.envs import Env

    if "/" in loop_id:
        raise InvalidArgument(f"invalid loop id {loop_id!r}", field="loop")
    prefix = validate_key(f"loops/{loop_id}", field="loop")
    artifacts = artifacts or Env.read().artifacts_dir
    if "://" not in artifacts and not Path(artifacts).is_dir():  # open_store would create the folder
        raise NotFound(f"artifact store {artifacts} does not exist", field="artifacts")
    store = open_store(artifacts)
    if store.exists(f"{prefix}/summary.json"):
        summary = _checked(store.get_json(f"{prefix}/summary.json"), store.uri(f"{prefix}/summary.json"))
        summary.setdefault("summary_uri", store.uri(f"{prefix}/summary.json"))
        return summary, store
    if not store.exists(f"{prefix}/rounds.jsonl"):
        raise NotFound(f"no loop {loop_id!r} in {store.root_uri} (neither summary.json nor rounds.jsonl)", field="loop")
    state = store.get_json(f"{prefix}/state.json") if store.exists(f"{prefix}/state.json") else {}
    summary = {
        "loop_id": loop_id,
        "status": state.get("status", "running"),
        "store": store.uri(prefix),
        "iterations": store.get_jsonl(f"{prefix}/rounds.jsonl"),
    }
    return summary, store


def _checked(summary, where: str) -> dict:
    if not isinstance(summary, dict):
        raise InvalidArgument(f"{where}: a summary must be a JSON object", field="summary")
    return summary


def load_experiment_summaries(experiment: dict, artifacts: str | None = None):
    """``(summaries by seed, store)`` for an experiment's loops; a loop whose summary cannot be found is left out."""
    summaries, store = {}, None
    for seed, loop in sorted((experiment.get("loops") or {}).items()):
        try:
            summaries[seed], found = load_summary(loop.get("summary_uri") or loop["loop_id"], artifacts)
        except (MontessoriError, KeyError):
            continue
        store = store or found
    return summaries, store


def read_rows(uri: str | None, store) -> tuple[list[dict] | None, str]:
    """Rows of a JSONL artifact, or ``(None, why not)``: a report shows what it can."""
    from common.jsonl import read_jsonl

    if not uri:
        return None, "no URI recorded"
    try:
        if store is not None:
            try:
                key = store.key_of(uri)
            except InvalidArgument:
                key = None
            if key is not None:
                return (store.get_jsonl(key), "") if store.exists(key) else (None, f"{uri} does not exist")
        if uri.startswith("file://"):
            path = Path(unquote(uri.removeprefix("file://")))
            return (read_jsonl(path, allow_empty=True), "") if path.is_file() else (None, f"{uri} does not exist")
    except (MontessoriError, OSError) as err:
        return None, str(err)
    return None, f"{uri} is outside the artifact store"
