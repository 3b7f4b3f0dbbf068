"""The local artifact store: atomic publish, digests, key validation."""
from __future__ import annotations

import hashlib

import pytest

from common.artifacts import LocalArtifactStore, open_store, sha256_tree, validate_key
from common.errors import InvalidArgument, NotFound


def test_put_and_read_back_with_digest(tmp_path):
    store = LocalArtifactStore(tmp_path / "store")
    ref = store.put_jsonl("loops/a/iter-1/x/rows.jsonl", [{"a": 1}, {"b": "é"}])
    data = (tmp_path / "store/loops/a/iter-1/x/rows.jsonl").read_bytes()
    assert ref.sha256 == hashlib.sha256(data).hexdigest() == store.digest("loops/a/iter-1/x/rows.jsonl")
    assert store.get_jsonl("loops/a/iter-1/x/rows.jsonl") == [{"a": 1}, {"b": "é"}]
    assert store.key_of(ref.uri) == "loops/a/iter-1/x/rows.jsonl"
    assert store.list("loops/a") == ["loops/a/iter-1/x/rows.jsonl"]


def test_folders_are_published_whole_and_replaced_atomically(tmp_path):
    store = LocalArtifactStore(tmp_path / "store")
    src = tmp_path / "model"
    src.mkdir()
    (src / "config.json").write_text("{}")
    (src / "weights.bin").write_bytes(b"1234")
    ref = store.put_dir("m/model", src)
    assert ref.sha256 == sha256_tree(store.local_path("m/model"))
    (src / "weights.bin").write_bytes(b"5678")
    ref2 = store.put_dir("m/model", src)
    assert ref2.sha256 != ref.sha256 and (store.local_path("m/model") / "weights.bin").read_bytes() == b"5678"
    leftovers = [p.name for p in (tmp_path / "store/m").iterdir()]
    assert leftovers == ["model"]  # no staging or retired copies left behind


@pytest.mark.parametrize("key", ["../x", "/abs", "a/../../b", "a//b", "", "a/./b", "a b"])
def test_bad_keys_are_rejected(key):
    with pytest.raises(InvalidArgument):
        validate_key(key)


def test_uris_outside_the_store_and_missing_artifacts(tmp_path):
    store = LocalArtifactStore(tmp_path / "store")
    with pytest.raises(InvalidArgument, match="not inside the artifact store"):
        store.key_of((tmp_path / "elsewhere.jsonl").as_uri())
    with pytest.raises(NotFound):
        store.local_path("nope/x.json")
    with pytest.raises(InvalidArgument, match="unsupported"):
        open_store("gopher://x")
