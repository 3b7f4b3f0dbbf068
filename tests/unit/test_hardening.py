"""Hardening (issue 15, the findings fixed so far): input at fault is INVALID_ARGUMENT naming the field, error texts
are bounded and escaped, ids are bounded and jobs expire, and a loop that crashes or keeps dying is recorded failed
instead of being resumed forever. Each test failed before its fix."""

from __future__ import annotations

import json
import math
import time

import grpc
import pytest

from cli.local import local_runner, resolved
from common.artifacts import LocalArtifactStore, validate_key
from common.config import from_dict, load_config
from common.errors import FailedPrecondition, InvalidArgument, printable
from common.jobs import JobManager
from common.registry import MAX_REQUEST_ID
from montessori.v1 import common_pb2, preference_pb2, preference_pb2_grpc, trainer_pb2
from services.controller.config import RunConfig
from services.controller.loop import MAX_RESUMES, check_data_files
from services.controller.loops import LoopManager
from tests.assemble_inputs import one_pair_inputs
from tests.conftest import DATA, REPO
from tests.stream_limits import open_health_watches

TINY = REPO / "configs" / "tiny.yaml"


# ---------------------------------------------------------------- input at fault: INVALID_ARGUMENT naming the field


def test_a_key_segment_over_255_characters_is_invalid_not_an_os_error():
    with pytest.raises(InvalidArgument) as err:
        validate_key(f"jobs/{'x' * 256}/out", field="output_prefix")
    assert err.value.field == "output_prefix" and "255" in err.value.message
    assert validate_key(f"jobs/{'x' * 255}") == f"jobs/{'x' * 255}"


@pytest.mark.parametrize("prefix", [".hidden/x", "loops/B/.x", "loops/B", "loops/B/state.json", "loops/B/inputs/x"])
def test_hidden_reserved_and_loop_root_output_prefixes_are_invalid(prefix):
    """``.hidden/x`` used to be accepted and then be invisible to ``artifacts ls`` and gc."""
    from common.request_fields import output_prefix

    with pytest.raises(InvalidArgument) as err:
        output_prefix(prefix)
    assert err.value.field == "output_prefix"
    assert output_prefix("loops/B/iter-1/pairs") == "loops/B/iter-1/pairs"


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf])
def test_nan_and_infinite_settings_are_invalid(value):
    with pytest.raises(InvalidArgument) as err:
        from_dict(RunConfig, {"evaluation": {"confidence": value}})
    assert err.value.field == "evaluation.confidence"
    with pytest.raises(InvalidArgument) as err:  # a stage section, resolved the way its worker resolves it
        resolved(from_dict(RunConfig, {"preference": {"min_margin": value}}))
    assert err.value.field == "preference.min_margin" and "finite" in err.value.message


@pytest.mark.parametrize("content", [b'{"instruction": "caf\xe9", "output": "x"}\n', b"\x7fELF\x02\x01\x01\x00\x00"])
def test_a_data_file_that_is_not_utf8_text_is_invalid_naming_the_field(tmp_path, content):
    seed = tmp_path / "seed.jsonl"
    seed.write_bytes(content)
    config = from_dict(
        RunConfig,
        {
            "data": {
                "seed_path": str(seed),
                "reference_path": str(DATA / "reference.jsonl"),
                "eval_path": str(DATA / "eval.jsonl"),
            }
        },
    )
    with pytest.raises(InvalidArgument) as err:
        check_data_files(config)
    assert err.value.field == "data.seed_path" and f"{seed}:1" in err.value.message


def test_rows_keep_unicode_line_separators_inside_json_strings(tmp_path):
    from common.jsonl import read_jsonl

    path = tmp_path / "rows.jsonl"
    path.write_text(json.dumps({"instruction": "a\u2028b", "output": "c"}, ensure_ascii=False) + "\r\n")
    assert read_jsonl(path) == [{"instruction": "a\u2028b", "output": "c"}]


@pytest.mark.parametrize("seed", [-1, 1_000_001, 2**63 - 1])
def test_the_loop_seed_is_bounded(seed):
    """2**63-1 used to be accepted and kill the loop thread with a ValueError deep in numpy's seeding."""
    with pytest.raises(InvalidArgument) as err:
        from_dict(RunConfig, {"seed": seed})
    assert err.value.field == "seed"


@pytest.mark.parametrize("name", ["x" * 101, "a b", "../up", ""])
def test_loop_names_are_bounded_key_segments(name):
    with pytest.raises(InvalidArgument) as err:
        from_dict(RunConfig, {"name": name})
    assert err.value.field == "name"


def test_a_stage_seed_beyond_numpys_range_is_invalid(tiny_student):
    from services.trainer import stages

    request = trainer_pb2.TrainStudentRequest(
        student=common_pb2.ModelSpec(path=str(tiny_student)), seed=2**40, validate_only=True
    )
    with pytest.raises(InvalidArgument) as err:
        stages.train_student(LocalArtifactStore("/nonexistent-store"), request)
    assert err.value.field == "seed"


# ---------------------------------------------------------------- error texts: bounded, escaped


def test_printable_escapes_control_characters_and_bounds_the_length():
    assert printable("a\x00b\nc\x1b") == "a\\x00b\\nc\\x1b"
    text = printable("é" * 5000)
    assert text.startswith("é" * 1024) and text.endswith("(3976 more characters)")
    assert printable("é", ascii_only=True) == "\\xe9"


def test_an_error_echoing_a_huge_field_keeps_its_code_over_grpc(tmp_path):
    """A 3 MB URI echoed in full used to exceed the 16 KiB header limit: RESOURCE_EXHAUSTED "Stream removed"."""
    from common.grpc_server import ServerConfig
    from common.service_main import start_service
    from services.preference.servicer import build

    service = start_service("preference", ServerConfig(artifacts=str(tmp_path / "store")), build)
    try:
        with grpc.insecure_channel(f"127.0.0.1:{service.port}") as channel:
            stub = preference_pb2_grpc.PreferenceServiceStub(channel)
            huge = "s3://elsewhere/" + "\x00x" * 1_500_000
            with pytest.raises(grpc.RpcError) as err:
                stub.Assemble(preference_pb2.AssembleRequest(candidates=common_pb2.ArtifactRef(uri=huge)), timeout=60)
    finally:
        service.stop()
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    details = err.value.details()
    assert details.startswith("candidates.uri") and len(details) < 1500 and "\x00" not in details


# ---------------------------------------------------------------- ids and jobs


def test_request_ids_are_bounded():
    jobs = JobManager(service="test")
    try:
        with pytest.raises(InvalidArgument) as err:
            jobs.submit("r" * (MAX_REQUEST_ID + 1), "k", lambda progress: None)
        assert err.value.field == "request_id"
        with pytest.raises(InvalidArgument):
            jobs.submit("bad\x00id", "k", lambda progress: None)
    finally:
        jobs.shutdown(grace=1)


def test_finished_jobs_expire_after_the_ttl():
    from common.errors import NotFound

    jobs = JobManager(service="test", ttl_seconds=0.0)
    try:
        first = jobs.submit("a", "k", lambda progress: {"n": 1})
        assert jobs.wait(first.job_id, timeout=30).state.terminal
        jobs.submit("b", "k", lambda progress: {"n": 2})  # registering a job forgets the expired ones
        with pytest.raises(NotFound) as err:
            jobs.get(first.job_id)
        assert "expire" in err.value.message
    finally:
        jobs.shutdown(grace=1)


# ---------------------------------------------------------------- loops that crash are recorded failed


def _config(tmp_path, loop_id: str):
    return load_config(
        RunConfig,
        TINY,
        [
            f"artifacts={tmp_path}",
            f"loop_id={loop_id}",
            "iterations=1",
            "evaluation.shift_samples=0",
            "evaluation.baseline=false",
        ],
    )


def test_a_runner_that_crashes_is_recorded_failed_and_not_resumed(tmp_path):
    runner = local_runner(_config(tmp_path, "crashes"))

    def crash(request, progress):
        raise ValueError("a bug deep in a stage")

    runner.executor.run = crash
    with pytest.raises(ValueError):
        runner.run()
    state = json.loads((tmp_path / "loops/crashes/state.json").read_text())
    assert state["status"] == "failed" and "internal error (ValueError" in state["error"]
    assert LoopManager(LocalArtifactStore(tmp_path), lambda loop_id: None).resume_all() == []


def test_a_loop_that_keeps_dying_on_resume_is_given_up(tmp_path):
    config = _config(tmp_path, "dies")
    first = local_runner(config, should_stop=lambda: bool(first.state["stages"]), interrupted=lambda: True)
    with pytest.raises(Exception):  # noqa: B017 - Cancelled: the process "died" after one stage
        first.run()
    store = LocalArtifactStore(tmp_path)
    state = store.get_json("loops/dies/state.json")
    assert state["status"] == "running" and state["stages"]
    store.put_json("loops/dies/state.json", {**state, "resumes_without_progress": MAX_RESUMES})
    with pytest.raises(FailedPrecondition, match="resumed 3 times"):
        local_runner(config).run()
    assert store.get_json("loops/dies/state.json")["status"] == "failed"


def test_one_unreadable_loop_does_not_stop_the_others_from_resuming(tmp_path):
    """A crash between state.json and its digest sidecar used to make start-up exit 2."""
    store = LocalArtifactStore(tmp_path)
    store.put_json("loops/torn/state.json", {"loop_id": "torn", "status": "running", "stages": {}})
    (tmp_path / "loops/torn/state.json").write_text('{"loop_id": "torn", "status": "running", "stages": {}, "x": 1}')
    store.put_json("loops/odd/state.json", {"loop_id": "odd", "status": "running"})  # no config: cannot resume
    assert LoopManager(store, lambda loop_id: None).resume_all() == []


# ---------------------------------------------------------------- streams cannot starve a service


def test_200_open_streams_leave_health_and_unary_calls_answering(tmp_path):
    """Each open stream holds a server thread: 32 used to freeze Health/Check and GetJob. Now streams past
    ``max_streams`` are RESOURCE_EXHAUSTED at once and the threads kept for unary calls always answer."""

    from grpc_health.v1 import health_pb2, health_pb2_grpc

    from common.grpc_server import ServerConfig
    from common.service_main import start_service
    from services.preference.servicer import build

    service = start_service("preference", ServerConfig(artifacts=str(tmp_path / "store"), max_streams=16), build)
    # Channels of their own (grpc shares one connection between same-target channels, 100 streams at most).
    own = [("grpc.use_local_subchannel_pool", 1)]
    channels = [grpc.insecure_channel(f"127.0.0.1:{service.port}", options=own) for _ in range(5)]
    try:
        outcomes, streams = open_health_watches(channels[:4], 200, timeout=60)
        assert outcomes == {"open": 16, "RESOURCE_EXHAUSTED": 184}
        check = health_pb2_grpc.HealthStub(channels[4]).Check(health_pb2.HealthCheckRequest(), timeout=2)
        assert check.status == health_pb2.HealthCheckResponse.SERVING
        with pytest.raises(grpc.RpcError) as err:
            preference_pb2_grpc.PreferenceServiceStub(channels[4]).GetJob(
                common_pb2.GetJobRequest(job_id="x"), timeout=2
            )
        assert err.value.code() == grpc.StatusCode.NOT_FOUND
        for call in streams:
            call.cancel()
        for _ in range(100):  # the server sees the cancellations and frees the slots (bounded wait)
            again = health_pb2_grpc.HealthStub(channels[4]).Watch(health_pb2.HealthCheckRequest(), timeout=10)
            try:
                next(again)
                break
            except grpc.RpcError:
                time.sleep(0.1)
        else:
            pytest.fail("no stream slot came back after the streams were cancelled")
        again.cancel()
    finally:
        for channel in channels:
            channel.close()
        service.stop()


# ---------------------------------------------------------------- request ids cannot be squatted


def test_a_job_submitted_first_under_the_loops_predictable_id_does_not_fail_the_loop(tmp_path):
    """Request ids used to be ``<loop>:<output prefix>``: anyone could take one first with another request, and
    the loop's own submit then failed for good (FAILED_PRECONDITION). Now the id is the digest of the request."""
    from common.grpc_server import ServerConfig
    from common.service_main import start_service
    from services.controller.remote import RemoteExecutor, WorkerAddresses
    from services.preference.servicer import build

    service = start_service("preference", ServerConfig(artifacts=str(tmp_path / "store")), build)
    store = service.store
    candidates, scores = one_pair_inputs(store)
    unused = "127.0.0.1:9"
    executor = RemoteExecutor(
        store, WorkerAddresses(unused, unused, f"127.0.0.1:{service.port}", unused), request_prefix="L"
    )
    try:
        with grpc.insecure_channel(f"127.0.0.1:{service.port}") as channel:
            squatter = preference_pb2_grpc.PreferenceServiceStub(channel)
            squatter.Assemble(
                preference_pb2.AssembleRequest(
                    request_id="L:loops/L/iter-1/pairs",
                    candidates=candidates,
                    scores=scores,
                    output_prefix="elsewhere/pairs",
                ),
                timeout=30,
            )
        result = executor.run(
            preference_pb2.AssembleRequest(candidates=candidates, scores=scores, output_prefix="loops/L/iter-1/pairs")
        )
    finally:
        executor.close()
        service.stop()
    assert result.metrics["pairs"] == 1


# ---------------------------------------------------------------- node paths


def test_a_service_loads_node_models_only_from_its_models_directory(tmp_path, tiny_teacher):
    """Any folder of the node could be loaded as a teacher, or probed for (NOT_FOUND vs another error)."""
    from common.grpc_server import ServerConfig
    from common.service_main import start_service
    from montessori.v1 import trainer_pb2_grpc
    from services.trainer.servicer import build

    service = start_service("trainer", ServerConfig(artifacts=str(tmp_path / "store")), build)
    try:
        with grpc.insecure_channel(f"127.0.0.1:{service.port}") as channel:
            stub = trainer_pb2_grpc.TrainerServiceStub(channel)
            for path in ("/etc", "/etc/shadow", "/nonexistent", str(tmp_path)):
                with pytest.raises(grpc.RpcError) as err:
                    stub.TrainTeacher(
                        trainer_pb2.TrainTeacherRequest(teacher=common_pb2.ModelSpec(path=path), validate_only=True),
                        timeout=30,
                    )
                assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT, (path, err.value.details())
                assert err.value.details().startswith("teacher.path")
            stub.TrainTeacher(
                trainer_pb2.TrainTeacherRequest(  # inside the models directory: fine
                    teacher=common_pb2.ModelSpec(path=str(tiny_teacher)), validate_only=True
                ),
                timeout=30,
            )
    finally:
        service.stop()


# ---------------------------------------------------------------- an artifact and its digest stay a pair


def test_a_crash_between_an_artifact_and_its_digest_leaves_it_readable(tmp_path, monkeypatch):
    """A controller killed between writing state.json and its digest sidecar could not start again: the old
    sidecar called the new state corrupted. Now the sidecar accepts both digests until the write is over."""
    store = LocalArtifactStore(tmp_path / "store")
    store.put_json("loops/L/state.json", {"status": "running", "stages": 1})

    def killed(self, target, digest):
        raise KeyboardInterrupt("killed before the sidecar was updated")

    monkeypatch.setattr(LocalArtifactStore, "_record_digest", killed)
    with pytest.raises(KeyboardInterrupt):
        store.put_json("loops/L/state.json", {"status": "running", "stages": 2})
    monkeypatch.undo()
    restarted = LocalArtifactStore(tmp_path / "store")
    assert restarted.get_json("loops/L/state.json") == {"status": "running", "stages": 2}
    # and a real corruption is still caught
    (tmp_path / "store" / "loops/L/state.json").write_text('{"status": "tampered"}')
    with pytest.raises(FailedPrecondition, match="digest mismatch"):
        LocalArtifactStore(tmp_path / "store").get_json("loops/L/state.json")


# ---------------------------------------------------------------- published artifacts are write-once


def _finished(stub, job: common_pb2.Job) -> common_pb2.Job:
    deadline = time.monotonic() + 60
    while job.state in (common_pb2.JOB_STATE_QUEUED, common_pb2.JOB_STATE_RUNNING):
        assert time.monotonic() < deadline, "job did not finish"
        time.sleep(0.05)
        job = stub.GetJob(common_pb2.GetJobRequest(job_id=job.job_id), timeout=10).job
    return job


@pytest.fixture
def preference_service(tmp_path):
    from common.grpc_server import ServerConfig
    from common.service_main import start_service
    from services.preference.servicer import build

    service = start_service("preference", ServerConfig(artifacts=str(tmp_path / "store")), build)
    channel = grpc.insecure_channel(f"127.0.0.1:{service.port}")
    yield service, preference_pb2_grpc.PreferenceServiceStub(channel)
    channel.close()
    service.stop()


def _assemble_inputs(store, influences: list[float]):
    rows = [{"id": f"c{i}", "group_id": "g", "prompt": "p", "raw_sample": f"s{i}"} for i in range(3)]
    candidates = store.put_jsonl("loops/L/iter-1/probe-data/candidates.jsonl", rows)
    scores = store.put_jsonl(
        f"loops/L/iter-1/scores-{influences[0]}/scores.jsonl",
        [{"id": f"c{i}", "influence": x} for i, x in enumerate(influences)],
    )
    ref = lambda artifact: common_pb2.ArtifactRef(uri=artifact.uri, sha256=artifact.sha256)  # noqa: E731
    return ref(candidates), ref(scores)


def test_a_published_stage_is_never_rewritten_by_another_request(preference_service):
    """An Assemble into another loop's published pairs replaced pairs.jsonl, its manifest and its digest."""
    service, stub = preference_service
    candidates, scores = _assemble_inputs(service.store, [1.0, -1.0, 0.5])
    request = preference_pb2.AssembleRequest(
        request_id="L:first", candidates=candidates, scores=scores, output_prefix="loops/L/iter-1/pairs"
    )
    first = _finished(stub, stub.Assemble(request, timeout=30).job)
    assert first.state == common_pb2.JOB_STATE_SUCCEEDED, first.error_message
    pairs = service.store.local_path("loops/L/iter-1/pairs/pairs.jsonl")
    before = (pairs.read_bytes(), pairs.stat().st_mtime_ns)

    _, other_scores = _assemble_inputs(service.store, [-1.0, 1.0, 0.5])
    other = preference_pb2.AssembleRequest(
        request_id="L:second", candidates=candidates, scores=other_scores, output_prefix="loops/L/iter-1/pairs"
    )
    with pytest.raises(grpc.RpcError) as refused:
        stub.Assemble(other, timeout=30)
    assert refused.value.code() == grpc.StatusCode.ALREADY_EXISTS
    assert ("montessori-field", "output_prefix") in tuple(refused.value.trailing_metadata())

    inside = preference_pb2.AssembleRequest()
    inside.CopyFrom(request)
    inside.request_id, inside.output_prefix = "L:inside", "loops/L/iter-1/pairs/more"
    with pytest.raises(grpc.RpcError) as refused:  # nothing is added inside a published stage folder either
        stub.Assemble(inside, timeout=30)
    assert refused.value.code() == grpc.StatusCode.ALREADY_EXISTS

    # The same request again (a retry after a worker restart) gets the published result, nothing rewritten.
    retry = preference_pb2.AssembleRequest()
    retry.CopyFrom(request)
    retry.request_id = "L:retry"
    again = _finished(stub, stub.Assemble(retry, timeout=30).job)
    assert again.state == common_pb2.JOB_STATE_SUCCEEDED
    assert again.manifest.sha256 == first.manifest.sha256
    assert (pairs.read_bytes(), pairs.stat().st_mtime_ns) == before


def test_a_job_cannot_write_inside_another_loop(preference_service):
    service, stub = preference_service
    candidates, scores = _assemble_inputs(service.store, [1.0, -1.0, 0.5])
    for request_id in ("A:x", "x", "LL:x"):
        with pytest.raises(grpc.RpcError) as refused:
            stub.Assemble(
                preference_pb2.AssembleRequest(
                    request_id=request_id, candidates=candidates, scores=scores, output_prefix="loops/L/iter-1/pairs"
                ),
                timeout=30,
            )
        assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "loops/L/" in refused.value.details()
    assert not service.store.exists("loops/L/iter-1/pairs")
