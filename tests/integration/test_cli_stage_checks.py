"""A single-stage command applies the checks of the worker service that runs its stage (issue 25): the same bad
input is refused by the real service over gRPC (INVALID_ARGUMENT or NOT_FOUND naming the request field) and by the
command (exit 2, one line naming the flag or config field the user wrote), and the command leaves nothing behind.

The service gets the very request the command builds (``cli.stage_commands.requests``), from the same store."""

from __future__ import annotations

import importlib
import shutil

import grpc
import pytest

from cli import stage_commands
from cli.main import main, make_parser
from common.config import load_config
from common.grpc_server import FIELD_METADATA, ServerConfig
from common.service_main import start_service
from common.stages import stage_of
from montessori.v1 import influence_pb2_grpc, preference_pb2_grpc, teacher_pb2_grpc, trainer_pb2_grpc
from services.controller.config import RunConfig
from tests.conftest import DATA, REPO

STUBS = {
    "teacher": teacher_pb2_grpc.TeacherServiceStub,
    "trainer": trainer_pb2_grpc.TrainerServiceStub,
    "influence": influence_pb2_grpc.InfluenceServiceStub,
    "preference": preference_pb2_grpc.PreferenceServiceStub,
}


def _jsonl(path, rows: int = 2):
    path.write_text("".join('{"instruction": "a", "input": "", "output": "b"}\n' for _ in range(rows)))
    return str(path)


@pytest.fixture
def work(tmp_path, tiny_models):
    """A folder with the inputs the commands read (data files, candidates, scores, pairs), and a model folder
    outside the models directory."""
    teacher, _ = tiny_models
    for name in ("seed.jsonl", "reference.jsonl", "eval.jsonl"):
        shutil.copy(DATA / name, tmp_path / name)
    _jsonl(tmp_path / "candidates.jsonl")
    _jsonl(tmp_path / "scores.jsonl")
    _jsonl(tmp_path / "pairs.jsonl")
    shutil.copytree(teacher, tmp_path / "elsewhere-teacher")
    return tmp_path


def _data(work) -> list[str]:
    return [f"--set=data.{name}_path={work / f'{name}.jsonl'}" for name in ("seed", "reference", "eval")]


#: (command and flags, given the work folder; the field the service names; the field the command names)
CASES = {
    "seed out of range": (
        lambda w: ["generate", "--examples", "2", "--out", str(w / "out"), "--set", "seed=-1"],
        "seed",
        "seed",
    ),
    "hidden output prefix": (
        lambda w: [
            "pairs",
            "--candidates",
            str(w / "candidates.jsonl"),
            "--scores",
            str(w / "scores.jsonl"),
            "--out",
            str(w / ".hidden" / "out"),
        ],  # fmt: skip
        "output_prefix",
        "--out",
    ),
    "reserved output prefix": (
        lambda w: ["train-teacher", "--pairs", str(w / "pairs.jsonl"), "--out", str(w / "inputs" / "out")],
        "output_prefix",
        "--out",
    ),
    "model outside the models directory": (
        lambda w: [
            "generate",
            "--examples",
            "2",
            "--out",
            str(w / "out"),
            "--set",
            f"models.teacher={w / 'elsewhere-teacher'}",
        ],  # fmt: skip
        "teacher.path",
        "models.teacher.path",
    ),
    "bad setting": (
        lambda w: ["train-teacher", "--pairs", str(w / "pairs.jsonl"), "--out", str(w / "out"), "--set", "dpo.beta=-1"],
        "dpo.beta",
        "dpo.beta",
    ),
    "missing input": (
        lambda w: ["train-student", "--candidates", str(w / "absent.jsonl"), "--out", str(w / "out")],
        "candidates.uri",
        "--candidates",
    ),
}


def _service_refusal(argv: list[str]) -> tuple[grpc.StatusCode, str]:
    """The request the command builds, sent to a real worker service started by its own start-up module."""
    args = make_parser().parse_args(argv)
    overrides = [argv[i + 1] for i, flag in enumerate(argv) if flag == "--set"] + [
        flag.removeprefix("--set=") for flag in argv if flag.startswith("--set=")
    ]
    # The run config refuses a negative seed itself, before any request exists: the service gets it in the request.
    seed = -1 if "seed=-1" in overrides else None
    config = load_config(RunConfig, None, [o for o in overrides if o != "seed=-1"])
    files = stage_commands._Files(stage_commands._paths(args, config))
    (request,) = stage_commands.requests(args, config, files)
    if seed is not None:
        request.seed = seed
    stage = stage_of(request)
    serve = make_parser().parse_args(["serve", stage.service, "--insecure"])
    builder = importlib.import_module(f"services.{stage.service}.main").builder(serve, "")
    service = start_service(stage.service, ServerConfig(port=0, artifacts=str(files.store.root)), builder)
    channel = grpc.insecure_channel(f"127.0.0.1:{service.port}")
    try:
        with pytest.raises(grpc.RpcError) as refused:
            getattr(STUBS[stage.service](channel), stage.rpc)(request, timeout=60)
    finally:
        channel.close()
        service.stop()
    return refused.value.code(), dict(refused.value.trailing_metadata() or ()).get(FIELD_METADATA)


@pytest.mark.parametrize("case", CASES, ids=list(CASES))
def test_a_bad_input_the_service_refuses_is_refused_by_the_command(case, work, capsys, monkeypatch):
    command, service_field, cli_field = CASES[case]
    monkeypatch.chdir(REPO)  # the run config's models (models/tiny-*) and the models directory are the repo's
    argv = [*command(work), *_data(work), "--no-progress"]
    code, field = _service_refusal(argv)
    assert code in (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND)
    assert field == service_field
    before = sorted(p.relative_to(work) for p in work.rglob("*"))
    capsys.readouterr()
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"montessori: error: {cli_field}: "), err
    assert sorted(p.relative_to(work) for p in work.rglob("*")) == before  # nothing left behind
