"""``montessori artifacts gc`` keeps every stage folder of a loop that has not ended (issue 22, finding 4): a running
stage has no manifest yet, and its ``request.json`` and ``-checkpoint`` folder are what its re-send resumes from."""

from __future__ import annotations

import pytest

from common.artifacts import LocalArtifactStore
from common.errors import AlreadyExists
from common.lineage import garbage
from common.manifests import MANIFEST
from common.publication import REQUEST, published

RUNNING_STAGE = ["iter-1/warmup/request.json", "iter-1/warmup-checkpoint/step-3/model.safetensors"]
DONE_STAGE = ["iter-1/warmup-data/request.json", "iter-1/warmup-data/candidates.jsonl"]


def loop(store: LocalArtifactStore, loop_id: str, status: str | None) -> None:
    """A loop with one published stage and one that was running (or, once the loop ended, left behind)."""
    if status is not None:
        store.put_json(f"loops/{loop_id}/state.json", {"status": status})
    store.put_json(f"loops/{loop_id}/iter-1/warmup-data/{MANIFEST}", {"outputs": {}})
    for key in DONE_STAGE:
        store.put_bytes(f"loops/{loop_id}/{key}", b"{}")
    store.put_json(f"loops/{loop_id}/{RUNNING_STAGE[0]}", {"request_sha256": "d" * 64})
    store.put_bytes(f"loops/{loop_id}/{RUNNING_STAGE[1]}", b"weights")


@pytest.mark.parametrize("keep", [None, ["other"]], ids=["all-loops-kept", "keep-names-another-loop"])
def test_gc_keeps_a_running_loop_whole_and_collects_an_ended_loops_leftovers(tmp_path, keep):
    store = LocalArtifactStore(tmp_path)
    loop(store, "running", "running")
    loop(store, "starting", None)  # no state.json yet: being started
    loop(store, "ended", "succeeded")
    doomed = garbage(store, keep)
    assert not [key for key in doomed if key.startswith(("loops/running/", "loops/starting/"))]
    if keep is None:
        assert sorted(doomed) == sorted(f"loops/ended/{key}" for key in RUNNING_STAGE)
    else:
        assert sorted(doomed) == sorted(k for k in store.list() if k.startswith("loops/ended/"))


def test_after_gc_the_running_stage_still_owns_its_prefix(tmp_path):
    """What broke: gc deleted the running stage's request.json; the stage then published, and its own re-send (a
    worker restart, a resumed loop) was refused with ALREADY_EXISTS."""
    store = LocalArtifactStore(tmp_path)
    loop(store, "running", "running")
    for key in garbage(store):
        store.delete(key)
    prefix, digest = "loops/running/iter-1/warmup", "d" * 64
    output = store.put_bytes(f"{prefix}/model/config.json", b"{}")
    store.put_json(f"{prefix}/{MANIFEST}", {"stage": "train-student", "outputs": {"model": output.to_dict()}})
    assert store.exists(f"{prefix}/{REQUEST}")
    result = published(store, prefix, digest)  # ALREADY_EXISTS had request.json gone
    assert result is not None and result.outputs["model"].sha256 == output.sha256
    with pytest.raises(AlreadyExists):
        published(store, prefix, "e" * 64)  # another request is still refused
