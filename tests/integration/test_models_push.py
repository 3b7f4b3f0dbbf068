"""``montessori models push``: a model folder published content-addressed, verified, idempotent (local and S3)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from cli.main import main
from cli.models import _tree_digest, push_model
from common.artifacts import LocalArtifactStore, sha256_tree
from common.errors import FailedPrecondition, InvalidArgument, NotFound


@pytest.fixture()
def model_folder(tmp_path: Path) -> Path:
    """A small folder shaped like an HF model (config.json, weights, tokenizer in a subfolder)."""
    folder = tmp_path / "tiny-model"
    (folder / "tok").mkdir(parents=True)
    (folder / "config.json").write_text('{"model_type": "llama"}\n')
    (folder / "model.safetensors").write_bytes(bytes(range(256)) * 64)
    (folder / "tok" / "tokenizer.json").write_text('{"vocab": {}}\n')
    return folder


@pytest.fixture(params=["local", "s3"])
def store(request, tmp_path):
    if request.param == "local":
        return LocalArtifactStore(tmp_path / "store")
    return request.getfixturevalue("s3_store")


def test_a_push_lands_under_its_digest_and_reads_back_identical(store, model_folder):
    result = push_model(store, model_folder)
    digest = sha256_tree(model_folder)
    assert result.uploaded and result.ref.sha256 == digest
    assert result.ref.uri == store.uri(f"models/tiny-model/{digest}")
    copy = store.local_path(store.key_of(result.ref.uri))
    assert sha256_tree(copy) == digest
    assert sorted(p.relative_to(copy).as_posix() for p in copy.rglob("*") if p.is_file()) == [
        "config.json",
        "model.safetensors",
        "tok/tokenizer.json",
    ]


def test_a_second_push_uploads_nothing_and_gives_the_same_uri(store, model_folder, monkeypatch):
    first = push_model(store, model_folder, name="student")
    monkeypatch.setattr(type(store), "put_dir", lambda *a, **k: pytest.fail("a second push must not upload"))
    second = push_model(store, model_folder, name="student")
    assert second.ref == first.ref and not second.uploaded


def test_a_changed_folder_gets_a_new_key_and_the_old_one_stays(store, model_folder):
    first = push_model(store, model_folder)
    (model_folder / "model.safetensors").write_bytes(b"retrained")
    second = push_model(store, model_folder)
    assert second.ref.uri != first.ref.uri and second.uploaded
    assert store.exists(store.key_of(first.ref.uri)) and store.exists(store.key_of(second.ref.uri))


def test_a_corrupted_upload_is_refused_and_removed(store, model_folder, monkeypatch):
    """The store ends up holding other bytes than the folder's (a truncated transfer): the push fails naming the
    folder, and the key is gone, so neither a loop nor the next push can use the bad copy."""
    real_put_dir = type(store).put_dir

    def corrupting_put_dir(self, key, source, *, move=False):
        damaged = source.parent / "damaged"
        shutil.copytree(source, damaged)
        (damaged / "model.safetensors").write_bytes(b"truncated")
        return real_put_dir(self, key, damaged)

    monkeypatch.setattr(type(store), "put_dir", corrupting_put_dir)
    with pytest.raises(FailedPrecondition) as err:
        push_model(store, model_folder)
    assert err.value.field == "folder" and "does not match" in err.value.message
    assert not store.exists(f"models/tiny-model/{sha256_tree(model_folder)}")


def test_an_object_corrupted_in_the_bucket_is_caught_by_the_verification(s3_store, model_folder, monkeypatch):
    """S3: the index is right but an object's bytes are not (the server stored something else)."""
    import io

    real_put_dir = type(s3_store).put_dir

    def put_then_damage(self, key, source, *, move=False):
        ref = real_put_dir(self, key, source)
        blob = b"bit rot"
        self.client.put_object(self.bucket, f"{key}/model.safetensors", io.BytesIO(blob), len(blob))
        return ref

    monkeypatch.setattr(type(s3_store), "put_dir", put_then_damage)
    with pytest.raises(FailedPrecondition) as err:
        push_model(s3_store, model_folder)
    assert err.value.field == "folder" and "model.safetensors" in err.value.message
    assert not s3_store.exists(f"models/tiny-model/{sha256_tree(model_folder)}")


def test_the_streamed_digest_formula_is_sha256_tree(tmp_path):
    """The S3 verification recomputes the folder digest from per-object digests: same order as sha256_tree
    (path parts: ``a/b`` sorts before ``a-b/x``, whose string sorts first)."""
    from common.artifacts import sha256_file

    for relative in ("a/b", "a-b/x", "a.b", "z"):
        (tmp_path / relative).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / relative).write_text(relative)
    files = {p.relative_to(tmp_path).as_posix(): sha256_file(p) for p in tmp_path.rglob("*") if p.is_file()}
    assert _tree_digest(files) == sha256_tree(tmp_path)


def test_a_folder_without_config_json_or_a_bad_name_is_refused_naming_the_field(tmp_path, model_folder):
    store = LocalArtifactStore(tmp_path / "store")
    with pytest.raises(NotFound) as err:
        push_model(store, tmp_path / "nothing-here")
    assert err.value.field == "folder"
    with pytest.raises(InvalidArgument) as err:
        push_model(store, model_folder, name="../escape")
    assert err.value.field == "--name"
    assert not (tmp_path / "store").exists()


def test_the_cli_prints_the_uri_and_digest_and_json(tmp_path, model_folder, capsys):
    store = tmp_path / "store"
    assert main(["models", "push", str(model_folder), "--store", str(store), "--name", "student"]) == 0
    lines = capsys.readouterr().out.splitlines()
    digest = sha256_tree(model_folder)
    assert lines[0] == (store / "models" / "student" / digest).as_uri()
    assert lines[1].startswith(f"sha256 {digest}") and "uploaded" in lines[1]
    assert main(["models", "push", str(model_folder), "--store", str(store), "--name", "student", "--json"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown == {"uri": lines[0], "sha256": digest, "uploaded": False}


def test_the_cli_reports_a_bad_folder_on_one_line_with_exit_2(tmp_path, capsys):
    assert main(["models", "push", str(tmp_path / "missing"), "--store", str(tmp_path / "store")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("montessori: error: folder: no model folder")
