"""Both artifact-store backends pass the same suite: the local folder and S3 (a real server on loopback)."""

from __future__ import annotations

import hashlib
import os

import pytest

from common.artifacts import LocalArtifactStore, open_store, validate_key
from common.errors import FailedPrecondition, InvalidArgument, NotFound, Unavailable


@pytest.fixture(params=["local", "s3"])
def store(request, tmp_path):
    if request.param == "local":
        return LocalArtifactStore(tmp_path / "store")
    return request.getfixturevalue("s3_store")


def corrupt(store, key: str, s3_server=None) -> None:
    """Flip the stored bytes of ``key`` behind the store's back."""
    if isinstance(store, LocalArtifactStore):
        path = store.root / key
    else:
        path = next(
            p for p in s3_server.data_dir.rglob("*") if p.is_file() and p.as_posix().endswith(f"{store.bucket}/{key}")
        )
    path.write_bytes(b"tampered" + path.read_bytes()[8:])


def test_put_and_read_back_with_digest(store):
    ref = store.put_jsonl("loops/a/iter-1/x/rows.jsonl", [{"a": 1}, {"b": "é"}])
    data = store.local_path("loops/a/iter-1/x/rows.jsonl").read_bytes()
    assert ref.sha256 == hashlib.sha256(data).hexdigest() == store.digest("loops/a/iter-1/x/rows.jsonl")
    assert store.get_jsonl("loops/a/iter-1/x/rows.jsonl") == [{"a": 1}, {"b": "é"}]
    assert store.key_of(ref.uri) == "loops/a/iter-1/x/rows.jsonl"
    assert store.list("loops/a") == ["loops/a/iter-1/x/rows.jsonl"]
    assert store.exists("loops/a/iter-1/x/rows.jsonl") and not store.exists("loops/a/iter-1/x/none.jsonl")


def test_folders_are_published_whole_and_replaced(store, tmp_path):
    src = tmp_path / "model"
    src.mkdir()
    (src / "config.json").write_text("{}")
    (src / "sub").mkdir()
    (src / "sub" / "weights.bin").write_bytes(os.urandom(64 * 1024))
    ref = store.put_dir("m/model", src)
    local = store.local_path("m/model")
    assert (local / "sub" / "weights.bin").read_bytes() == (src / "sub" / "weights.bin").read_bytes()
    assert store.ref("m/model").sha256 == ref.sha256
    (src / "sub" / "weights.bin").write_bytes(b"5678")
    ref2 = store.put_dir("m/model", src)
    assert ref2.sha256 != ref.sha256 and (store.local_path("m/model") / "sub" / "weights.bin").read_bytes() == b"5678"


def test_large_files_go_up_in_parts(store, tmp_path):
    big = tmp_path / "checkpoint.bin"
    big.write_bytes(os.urandom(40 * 1024 * 1024))  # > the 16 MiB part size: a multipart upload on S3
    ref = store.put_file("m/checkpoint.bin", big)
    assert store.local_path("m/checkpoint.bin").read_bytes() == big.read_bytes()
    assert ref.sha256 == hashlib.sha256(big.read_bytes()).hexdigest()


def test_a_failed_folder_upload_is_never_visible(store, tmp_path):
    src = tmp_path / "model"
    src.mkdir()
    (src / "a.json").write_text("{}")
    (src / "broken").symlink_to(tmp_path / "missing-target")  # unreadable mid-upload, like a disk error
    with pytest.raises(OSError):
        store.put_dir("m/half", src)
    assert not store.exists("m/half")
    with pytest.raises(NotFound):
        store.local_path("m/half")


def test_corruption_is_detected_on_read(store, request):
    store.put_bytes("c/data.txt", b"0123456789abcdef")
    corrupt(
        store, "c/data.txt", request.getfixturevalue("s3_server") if not isinstance(store, LocalArtifactStore) else None
    )
    if not isinstance(store, LocalArtifactStore):
        store._paths.clear()
        for cached in store.cache.rglob("data.txt"):
            cached.unlink()  # a fresh node: nothing cached yet
    with pytest.raises(FailedPrecondition, match="digest mismatch"):
        store.local_path("c/data.txt")


@pytest.mark.parametrize("key", ["../x", "/abs", "a/../../b", "a//b", "", "a/./b", "a b"])
def test_bad_keys_are_rejected(store, key):
    with pytest.raises(InvalidArgument):
        validate_key(key)
    with pytest.raises(InvalidArgument):
        store.put_bytes(key, b"x")


def test_uris_outside_the_store_and_missing_artifacts(store, tmp_path):
    with pytest.raises(InvalidArgument, match="not inside the artifact store"):
        store.key_of((tmp_path / "elsewhere.jsonl").as_uri())
    with pytest.raises(InvalidArgument, match="not inside the artifact store"):
        store.key_of("s3://another-bucket/x.json")
    with pytest.raises(NotFound):
        store.local_path("nope/x.json")
    with pytest.raises(InvalidArgument, match="unsupported"):
        open_store("gopher://x")


def test_delete(store):
    store.put_bytes("d/x.txt", b"x")
    store.delete("d/x.txt")
    assert not store.exists("d/x.txt")


# -- S3 specifics: credentials, reachability, buckets ------------------------------------------


def test_wrong_credentials_are_a_clear_error_without_the_secret(s3_server, tmp_path):
    from common.s3_store import S3ArtifactStore

    with pytest.raises(FailedPrecondition) as err:
        S3ArtifactStore(
            endpoint=s3_server.endpoint,
            access_key=s3_server.access_key,
            secret_key="wrong-secret-value",
            bucket="creds",
            cache_dir=tmp_path,
        )
    assert "rejected the credentials" in str(err.value) and "wrong-secret-value" not in str(err.value)


def test_unreachable_endpoint_retries_then_fails_clearly(tmp_path):
    from common.s3_store import S3ArtifactStore

    with pytest.raises(Unavailable, match="unreachable after retries"):
        S3ArtifactStore(
            endpoint="127.0.0.1:9",
            access_key="a",
            secret_key="b",
            bucket="bkt",
            cache_dir=tmp_path,
            retries=2,
            timeout=0.5,
        )


def test_missing_bucket_is_created_or_reported(s3_server, tmp_path):
    from common.s3_store import S3ArtifactStore

    kwargs = dict(
        endpoint=s3_server.endpoint,
        access_key=s3_server.access_key,
        secret_key=s3_server.secret_key,
        cache_dir=tmp_path,
    )
    with pytest.raises(NotFound, match="does not exist"):
        S3ArtifactStore(bucket="absent-bucket", create_bucket=False, **kwargs)
    S3ArtifactStore(bucket="created-bucket", **kwargs)
    assert S3ArtifactStore(bucket="created-bucket", create_bucket=False, **kwargs).list() == []


def test_downloads_are_cached_per_node_by_digest(s3_store, tmp_path):
    src = tmp_path / "m"
    src.mkdir()
    (src / "w.bin").write_bytes(b"w" * 1000)
    s3_store.put_dir("models/m", src)
    first = s3_store.local_path("models/m")
    mtime = (first / "w.bin").stat().st_mtime_ns
    second = s3_store.local_path("models/m")
    assert first == second and (second / "w.bin").stat().st_mtime_ns == mtime  # not downloaded again
    assert s3_store.describe(first)["uri"] == s3_store.uri("models/m")
