"""Models and data sets given to a loop as artifact-store URIs: what the controller sends (pinned ModelSpec
artifacts, data read from the store), the errors that name the run-config field, and `montessori loop start`
uploading the user's local data files before StartLoop."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
import yaml

from cli.loop_client import upload_data
from cli.main import main
from cli.models import push_model
from common.artifacts import LocalArtifactStore, sha256_file, sha256_tree
from common.config import from_dict
from common.errors import FailedPrecondition, InvalidArgument, NotFound
from common.protoconv import loop_spec
from montessori.v1 import controller_pb2, influence_pb2, teacher_pb2, trainer_pb2
from services.controller.config import RunConfig
from services.controller.loop import LoopRunner, check_data_files
from services.controller.loops import LoopManager
from services.controller.requests import base_model
from services.controller.servicer import ControllerServicer
from tests.conftest import DATA, REPO

TINY = yaml.safe_load((REPO / "configs" / "tiny.yaml").read_text())
LOCAL_DATA = {
    "seed_path": str(DATA / "seed.jsonl"),
    "reference_path": str(DATA / "reference.jsonl"),
    "eval_path": str(DATA / "eval.jsonl"),
}


class RecordingExecutor:
    """A StageExecutor that accepts every check and records the requests; it runs no stage."""

    def __init__(self):
        self.checked: list = []

    def check(self, request) -> None:
        self.checked.append(request)

    def run(self, request, progress):
        raise FailedPrecondition("this test runs no stage")

    def close(self) -> None:
        pass


def config_of(**sections) -> RunConfig:
    return from_dict(RunConfig, {**TINY, "name": "uris", "loop_id": "uris", "data": LOCAL_DATA, **sections})


def model_specs(executor: RecordingExecutor) -> dict[str, list]:
    """Every ModelSpec the loop's checks sent, by the role it plays."""
    specs: dict[str, list] = {"teacher": [], "student": []}
    for request in executor.checked:
        if isinstance(request, teacher_pb2.GenerateRequest | trainer_pb2.TrainTeacherRequest):
            specs["teacher"].append(request.teacher)
        elif isinstance(request, trainer_pb2.TrainStudentRequest | influence_pb2.ScoreRequest):
            specs["student"].append(request.student)
        elif isinstance(request, influence_pb2.EvaluateRequest):
            specs["student"].append(request.model)
    return specs


@pytest.fixture()
def store(tmp_path) -> LocalArtifactStore:
    return LocalArtifactStore(tmp_path / "store")


def test_a_store_uri_student_becomes_a_pinned_artifact_and_a_node_path_stays_a_path(store, tiny_models):
    teacher, student = tiny_models
    pushed = push_model(store, student, name="tiny-student").ref
    executor = RecordingExecutor()
    config = config_of(models={"teacher": str(teacher), "student": pushed.uri})
    LoopRunner(config, store=store, executor=executor).prepare()
    specs = model_specs(executor)
    assert len(specs["student"]) == 4 and len(specs["teacher"]) == 2
    for spec in specs["student"]:
        assert not spec.path and spec.artifact.uri == pushed.uri
        assert spec.artifact.sha256 == sha256_tree(student)
    for spec in specs["teacher"]:
        assert spec.path == str(teacher) and not spec.HasField("artifact")


def test_the_workers_accept_the_pinned_artifact_and_refuse_a_stale_digest(store, tiny_models):
    """The real worker validation (in process): a pushed student loads from the store; a digest that no longer
    matches the store's copy is refused naming models.student."""
    from cli.local import LocalExecutor

    teacher_path, student_path = tiny_models
    student = push_model(store, student_path).ref
    teacher = push_model(store, teacher_path).ref
    config = config_of(models={"teacher": teacher.uri, "student": student.uri})
    LoopRunner(config, store=store, executor=LocalExecutor(store)).prepare()  # no error: both load

    model = base_model(student.uri, store, field="models.student")
    stale = replace(model, artifact=replace(model.artifact, sha256="0" * 64))
    request = trainer_pb2.TrainStudentRequest(student=stale.to_proto(), validate_only=True)
    with pytest.raises(FailedPrecondition) as err:
        LocalExecutor(store).check(request)
    assert err.value.field == "student.artifact.sha256"


@pytest.mark.parametrize(
    ("value", "error", "words"),
    [
        ("s3://another-bucket/models/x/abc", InvalidArgument, "not inside the artifact store"),
        ("STORE/models/never-pushed/0123", NotFound, "no artifact at"),
    ],
)
def test_a_bad_model_uri_is_an_error_naming_the_field(store, tiny_models, value, error, words):
    value = value.replace("STORE", store.root_uri)
    executor = RecordingExecutor()
    config = config_of(models={"teacher": str(tiny_models[0]), "student": value})
    with pytest.raises(error) as err:
        LoopRunner(config, store=store, executor=executor).prepare()
    assert err.value.field == "models.student" and words in err.value.message
    assert executor.checked == [] and not store.exists("loops/uris")  # refused before any check, nothing left


def test_an_unsupported_scheme_is_refused_by_the_config():
    with pytest.raises(InvalidArgument) as err:
        config_of(models={"student": "https://example.com/gemma"})
    assert err.value.field == "models.student" and "artifact-store URI" in err.value.message
    with pytest.raises(InvalidArgument) as err:
        config_of(data={**LOCAL_DATA, "eval_path": "gs://bucket/eval.jsonl"})
    assert err.value.field == "data.eval_path"


def test_the_controller_names_spec_config_models_student(store, tiny_models):
    loops = LoopManager(store, lambda loop_id: RecordingExecutor())
    servicer = ControllerServicer(store, loops)
    document = {**TINY, "models": {"teacher": str(tiny_models[0]), "student": f"{store.root_uri}/models/none/00"}}
    request = controller_pb2.StartLoopRequest(spec=loop_spec(document))
    with pytest.raises(NotFound) as err:
        servicer.StartLoop(request, None)
    assert err.value.field == "spec.config.models.student"


def test_an_s3_model_is_pinned_from_its_recorded_digest_without_a_download(s3_store, tiny_models):
    student = tiny_models[1]
    pushed = push_model(s3_store, student).ref
    cached = sorted(p for p in s3_store.cache.rglob("*") if p.is_file())
    model = base_model(pushed.uri, s3_store, field="models.student")
    assert model.artifact == pushed and model.artifact.sha256 == sha256_tree(student) and not model.path
    assert sorted(p for p in s3_store.cache.rglob("*") if p.is_file()) == cached  # the controller fetched nothing
    with pytest.raises(NotFound) as err:
        base_model(f"{s3_store.root_uri}/models/none/00", s3_store, field="models.student")
    assert err.value.field == "models.student"


def test_data_uris_are_read_from_the_store_and_imported_with_the_same_digest(store):
    uploaded = upload_data({"data": LOCAL_DATA}, store)["data"]
    assert all(uri.startswith(store.root_uri + "/data/") for uri in uploaded.values())
    config = config_of(data=uploaded)
    check_data_files(config, store)
    runner = LoopRunner(config, store=store, executor=RecordingExecutor())
    imported = runner._import_data()
    for field, name in {"seed_path": "seed", "reference_path": "reference", "eval_path": "eval"}.items():
        assert imported[name].sha256 == sha256_file(Path(LOCAL_DATA[field]))
        assert imported[name].uri == store.uri(f"loops/uris/inputs/{name}.jsonl")


def test_a_data_uri_outside_the_store_or_missing_names_the_field(store, tmp_path):
    with pytest.raises(InvalidArgument) as err:
        check_data_files(config_of(data={**LOCAL_DATA, "seed_path": "s3://elsewhere/data/seed.jsonl"}), store)
    assert err.value.field == "data.seed_path"
    with pytest.raises(NotFound) as err:
        check_data_files(config_of(data={**LOCAL_DATA, "reference_path": f"{store.root_uri}/data/x.jsonl"}), store)
    assert err.value.field == "data.reference_path"
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"instruction": "no output"}\n')
    uri = upload_data({"data": {"eval_path": str(bad)}}, store)["data"]["eval_path"]
    with pytest.raises(InvalidArgument) as err:  # rows are checked in the store's copy too
        check_data_files(config_of(data={**LOCAL_DATA, "eval_path": uri}), store)
    assert err.value.field == "data.eval_path"


def test_uploads_are_content_addressed_and_idempotent(store, tmp_path, monkeypatch):
    first = upload_data({"data": LOCAL_DATA, "name": "x"}, store)
    assert first["name"] == "x"
    digest = sha256_file(DATA / "seed.jsonl")
    assert first["data"]["seed_path"] == store.uri(f"data/{digest}/seed.jsonl")
    monkeypatch.setattr(LocalArtifactStore, "put_file", lambda *a: pytest.fail("uploaded twice"))
    assert upload_data({"data": LOCAL_DATA}, store)["data"] == first["data"]
    assert upload_data({"data": first["data"]}, store)["data"] == first["data"]  # URIs are left as they are
    with pytest.raises(NotFound) as err:
        upload_data({"data": {"seed_path": str(tmp_path / "missing.jsonl")}}, store)
    assert err.value.field == "data.seed_path"


class FakeControllerStub:
    """What `loop start` sends: the StartLoop request goes to a real ControllerServicer in this process."""

    def __init__(self, servicer: ControllerServicer):
        self.servicer, self.requests = servicer, []

    def StartLoop(self, request, timeout=None):  # noqa: N802 - the gRPC method's name
        self.requests.append(request)
        return self.servicer.StartLoop(request, None)


def test_loop_start_uploads_local_data_and_the_controller_reads_it_from_the_store(store, tmp_path, monkeypatch, capsys):
    import cli.loop_client as loop_client

    seed = tmp_path / "my seed.jsonl"  # the user's own file, named as users name files
    seed.write_text((DATA / "seed.jsonl").read_text())
    config = tmp_path / "run.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                **TINY,
                "name": "mine",
                "models": {"teacher": "/models/t", "student": "/models/s"},
                "data": {**LOCAL_DATA, "seed_path": str(seed)},
            }
        )
    )
    executor = RecordingExecutor()
    loops = LoopManager(store, lambda loop_id: executor)
    stub = FakeControllerStub(ControllerServicer(store, loops))
    monkeypatch.setattr(loop_client, "_stub", lambda args: stub)
    try:
        assert main(["loop", "--insecure", "start", "--config", str(config), "--store", store.root_uri]) == 0
    finally:
        loops.shutdown(10)
    sent = stub.requests[0].spec.config
    assert sent.data.seed_path == store.uri(f"data/{sha256_file(seed)}/my-seed.jsonl")
    assert sent.data.eval_path.startswith(store.root_uri + "/data/")
    assert sent.models.student == "/models/s"  # only data is uploaded
    loop_id = capsys.readouterr().out.split('"loop_id": "')[1].split('"')[0]
    imported = store.ref(f"loops/{loop_id}/inputs/seed.jsonl")
    assert imported.sha256 == sha256_file(seed)
    assert executor.checked  # the loop was prepared (its inputs checked) on the uploaded data


def test_loop_start_without_a_store_sends_paths_unchanged(tmp_path, monkeypatch):
    import cli.loop_client as loop_client

    sent = []

    class Stub:
        def StartLoop(self, request, timeout=None):  # noqa: N802
            sent.append(request)
            raise SystemExit(0)

    monkeypatch.setattr(loop_client, "_stub", lambda args: Stub())
    with pytest.raises(SystemExit):
        main(["loop", "--insecure", "start", "--set", f"data.seed_path={DATA / 'seed.jsonl'}"])
    assert sent[0].spec.config.data.seed_path == str(DATA / "seed.jsonl")


def test_a_single_stage_command_given_a_store_uri_says_it_needs_a_folder(capsys):
    """`montessori evaluate` loads folders: a store URI is refused on one line naming the field."""
    code = main(["evaluate", "--student", "s3://montessori/models/x/0123"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and err[0].startswith("montessori: error: --student: "), err
    assert "artifact-store URI" in err[0]
