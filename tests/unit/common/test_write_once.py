"""Issue 22, finding 7 (write-once by a conditional create): ``request.json`` is created exclusively, so of two
runs racing for one output prefix exactly one runs and publishes, and the loser's failure never deletes the
winner's record. Before, the record was check-then-write: both runs wrote it, both worked and both published."""

from __future__ import annotations

import threading
import time

import pytest

from common.artifacts import LocalArtifactStore
from common.errors import AlreadyExists
from common.manifests import MANIFEST, StageResult
from common.protoconv import content_fingerprint
from common.publication import REQUEST, write_once
from montessori.v1 import common_pb2, preference_pb2

PREFIX = "loops/L/iter-1/pairs"


def _request(name: str) -> preference_pb2.AssembleRequest:
    scores = common_pb2.ArtifactRef(uri=f"file:///{name}", sha256="0" * 64)
    return preference_pb2.AssembleRequest(request_id=f"L:{name}", scores=scores, output_prefix=PREFIX)


def test_of_two_runs_racing_for_one_prefix_exactly_one_works_and_publishes(tmp_path):
    store = LocalArtifactStore(tmp_path)
    started = threading.Barrier(2, timeout=10)
    worked: list[str] = []
    outcomes: dict[str, object] = {}

    def work_of(name):
        def work(progress):
            worked.append(name)
            time.sleep(1.0)  # long enough for the other run to try the prefix while this one works
            ref = store.put_json(f"{PREFIX}/{MANIFEST}", {"stage": "pairs", "outputs": {}, "by": name})
            return StageResult("pairs", {}, {}, ref)

        return work

    runs = {name: write_once(store, _request(name), work_of(name)) for name in ("a", "b")}  # both submits pass

    def run(name):
        started.wait()
        try:
            outcomes[name] = runs[name](None)
        except Exception as err:  # noqa: BLE001 - handed to the test
            outcomes[name] = err

    threads = [threading.Thread(target=run, args=(name,)) for name in runs]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert len(worked) == 1, f"both runs worked: {worked}"
    (winner,) = worked
    loser = "b" if winner == "a" else "a"
    assert isinstance(outcomes[winner], StageResult)
    assert isinstance(outcomes[loser], AlreadyExists) and outcomes[loser].field == "output_prefix"
    assert store.get_json(f"{PREFIX}/{REQUEST}")["request_sha256"] == content_fingerprint(_request(winner))
    assert store.get_json(f"{PREFIX}/{MANIFEST}")["by"] == winner


def test_a_failing_run_deletes_only_its_own_record_and_a_resend_takes_its_prefix_back(tmp_path):
    store = LocalArtifactStore(tmp_path)

    def fail(progress):
        raise RuntimeError("worker crashed")

    with pytest.raises(RuntimeError):
        write_once(store, _request("a"), fail)(None)
    assert not store.exists(f"{PREFIX}/{REQUEST}")  # its own record, gone with its failure

    # A record left by a run that was killed (no failure path ran): the same request takes it back ...
    store.put_json(f"{PREFIX}/{REQUEST}", {"request_sha256": content_fingerprint(_request("a")), "type": "x"})
    result = write_once(store, _request("a"), lambda progress: StageResult("pairs", {}, {}, None))(None)
    assert result.stage == "pairs"
    # ... and another request, which fails before any work, leaves it where it is.
    with pytest.raises(AlreadyExists):
        write_once(store, _request("b"), fail)(None)
    assert store.get_json(f"{PREFIX}/{REQUEST}")["request_sha256"] == content_fingerprint(_request("a"))


def test_the_local_create_is_exclusive_and_leaves_the_existing_artifact_verifiable(tmp_path):
    store = LocalArtifactStore(tmp_path)
    assert store.create_json("k/record.json", {"n": 1}) is True
    assert store.create_json("k/record.json", {"n": 2}) is False
    assert store.get_json("k/record.json") == {"n": 1}  # its digest sidecar untouched by the losing create


def test_the_s3_create_refuses_an_existing_key_and_sends_the_condition(s3_store, monkeypatch):
    """On the test server (MinIO when installed, else nanio, which ignores ``If-None-Match``): a second create is
    refused and the first object kept; every create PUT carries ``If-None-Match: *``, which MinIO enforces."""
    sent = []
    put = s3_store.client._put_object

    def recording(*args, headers=None, **kwargs):
        sent.append(headers)
        return put(*args, headers=headers, **kwargs)

    monkeypatch.setattr(s3_store.client, "_put_object", recording)
    assert s3_store.create_json("k/record.json", {"n": 1}) is True
    assert s3_store.create_json("k/record.json", {"n": 2}) is False
    assert s3_store.get_json("k/record.json") == {"n": 1}
    assert s3_store.digest("k/record.json") == s3_store.recorded_digest("k/record.json")
    assert [h["If-None-Match"] for h in sent] == ["*"]
