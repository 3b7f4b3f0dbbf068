"""Path- and URI-like request fields are checked at the gRPC edge of every service: a NUL, another control character
or an over-long value is INVALID_ARGUMENT naming the field, never a ValueError deep in a stage (INTERNAL)."""

from __future__ import annotations

import grpc
import pytest

from common.errors import InvalidArgument
from common.request_fields import MAX_LOCATION_CHARS, check_locations, is_location_field, location
from montessori.v1 import (
    common_pb2,
    controller_pb2,
    influence_pb2,
    preference_pb2,
    preference_pb2_grpc,
    teacher_pb2,
    trainer_pb2,
)


def location_fields(descriptor, prefix: str = "", seen: tuple[str, ...] = ()) -> set[str]:
    found = set()
    for field in descriptor.fields:
        if field.message_type is not None and field.message_type.full_name not in seen:
            found |= location_fields(field.message_type, f"{prefix}{field.name}.", (*seen, descriptor.full_name))
        elif is_location_field(field):
            found.add(f"{prefix}{field.name}")
    return found


def test_every_path_and_uri_field_of_the_api_is_a_location():
    """The rule (names and suffixes) picks exactly the fields that name a file, folder, store key or URI; a path
    field named otherwise would need a name here or a suffix the rule knows."""
    requests = [
        controller_pb2.StartLoopRequest,
        teacher_pb2.GenerateRequest,
        teacher_pb2.LoadTeacherVersionRequest,
        influence_pb2.ScoreRequest,
        influence_pb2.MergeScoresRequest,
        influence_pb2.EvaluateRequest,
        preference_pb2.AssembleRequest,
        trainer_pb2.TrainStudentRequest,
        trainer_pb2.TrainTeacherRequest,
    ]
    found = {f"{r.DESCRIPTOR.name}.{name}" for r in requests for name in location_fields(r.DESCRIPTOR)}
    spec = "StartLoopRequest.spec.config"
    assert {
        f"{spec}.artifacts",
        f"{spec}.models.teacher",
        f"{spec}.models.student",
        f"{spec}.data.seed_path",
        f"{spec}.data.reference_path",
        f"{spec}.data.eval_path",
        "LoadTeacherVersionRequest.teacher.path",
        "LoadTeacherVersionRequest.teacher.artifact.uri",
        "LoadTeacherVersionRequest.teacher.adapters.uri",
        "ScoreRequest.student.path",
        "ScoreRequest.reference.uri",
        "ScoreRequest.output_prefix",
        "MergeScoresRequest.shards.uri",
        "AssembleRequest.scores.uri",
        "TrainTeacherRequest.pairs.uri",
    } <= found
    assert not {name for name in found if name.rsplit(".", 1)[-1] in ("request_id", "chat_template", "name")}


@pytest.mark.parametrize(
    "value", ["a\x00b", "\x00", "models/x\n", "x\ty", "\x7f", "\x85", "\x1b[31m", "x" * (MAX_LOCATION_CHARS + 1)]
)
def test_a_location_with_a_control_character_or_too_long_is_refused(value):
    with pytest.raises(InvalidArgument) as err:
        location(value, field="student.path")
    assert err.value.field == "student.path"


@pytest.mark.parametrize("value", ["", "models/tiny-student", "s3://bucket/loops/x/y", "é/\U0001f600", "../x"])
def test_other_locations_are_left_to_the_field_s_own_checks(value):
    assert location(value, field="path") == value


def test_the_error_names_the_nested_field():
    """The NUL path that reached ``Path(spec.path).resolve()`` (InfluenceService/Score, LoadTeacherVersion)."""
    score = influence_pb2.ScoreRequest(student=common_pb2.ModelSpec(path="models/a\x00b"))
    with pytest.raises(InvalidArgument) as err:
        check_locations(score)
    assert err.value.field == "student.path"
    merge = influence_pb2.MergeScoresRequest(
        shards=[common_pb2.ArtifactRef(uri="s3://b/ok"), common_pb2.ArtifactRef(uri="s3://b/\x00")]
    )
    with pytest.raises(InvalidArgument) as err:
        check_locations(merge)
    assert err.value.field == "shards[1].uri"
    loop = controller_pb2.StartLoopRequest()
    loop.spec.config.data.seed_path = "data/seed.jsonl\n"
    with pytest.raises(InvalidArgument) as err:
        check_locations(loop)
    assert err.value.field == "spec.config.data.seed_path"
    fine = teacher_pb2.GenerateRequest(request_id="a\x00b", teacher_label="\x00", output_prefix="x/y")
    assert check_locations(fine) is fine  # not locations: their own checks refuse them


def test_every_service_refuses_a_nul_path_at_its_edge(tmp_path):
    """Through the server's interceptor, before the handler: INVALID_ARGUMENT naming the field, in ASCII even when
    the value echoed is 1,000 emoji (percent-encoded, the text used to outgrow a client's 8 KiB of metadata)."""
    from common.grpc_server import FIELD_METADATA, ServerConfig
    from common.service_main import start_service
    from services.preference.servicer import build

    service = start_service("preference", ServerConfig(artifacts=str(tmp_path / "store")), build)
    try:
        with grpc.insecure_channel(f"127.0.0.1:{service.port}") as channel:
            stub = preference_pb2_grpc.PreferenceServiceStub(channel)
            with pytest.raises(grpc.RpcError) as refused:
                stub.Assemble(preference_pb2.AssembleRequest(scores=common_pb2.ArtifactRef(uri="s3://x/a\x00b")))
            with pytest.raises(grpc.RpcError) as echoed:
                stub.GetJob(common_pb2.GetJobRequest(job_id="\U0001f600" * 1000), timeout=30)
    finally:
        service.stop()
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT, refused.value.details()
    assert dict(refused.value.trailing_metadata())[FIELD_METADATA] == "scores.uri"
    assert refused.value.details().startswith("scores.uri: must not contain control characters")
    assert echoed.value.code() == grpc.StatusCode.NOT_FOUND, echoed.value.details()
    assert echoed.value.details().startswith("job_id: ") and echoed.value.details().isascii()
