"""Five services as separate processes: a loop through the controller, jobs, errors, health."""

from __future__ import annotations

import json
import threading
import urllib.request
from pathlib import Path

import grpc
import pytest
import yaml

from common.protoconv import loop_spec
from montessori.v1 import (
    common_pb2,
    controller_pb2,
    controller_pb2_grpc,
    influence_pb2,
    influence_pb2_grpc,
    preference_pb2,
    preference_pb2_grpc,
    teacher_pb2,
    teacher_pb2_grpc,
    trainer_pb2,
    trainer_pb2_grpc,
)
from tests.conftest import DATA, LOOP_SEEDS, REPO
from tests.loop_invariants import assert_rounds_consistent

TINY = yaml.safe_load((REPO / "configs" / "tiny.yaml").read_text())
ITERATION_STAGES = [
    "warmup-data",
    "warmup",
    "probe-data",
    "scores",
    "pairs",
    "dpo",
    "train-data",
    "student",
    "student-reference-loss",
]


def channel(services, name):
    return grpc.insecure_channel(f"127.0.0.1:{services['ports'][name]}")


def tiny_document(tiny_models, **overrides) -> dict:
    teacher, student = tiny_models
    return {
        **TINY,
        "name": "svc",
        "iterations": 1,
        "models": {"teacher": str(teacher), "student": str(student)},
        "data": {
            "seed_path": str(DATA / "seed.jsonl"),
            "reference_path": str(DATA / "reference.jsonl"),
            "eval_path": str(DATA / "eval.jsonl"),
        },
        **overrides,
    }


def tiny_spec(tiny_models, **overrides) -> controller_pb2.LoopSpec:
    return loop_spec(tiny_document(tiny_models, **overrides))


def seed_set(store) -> common_pb2.ArtifactRef:
    seed = store.put_file("inputs/seed.jsonl", DATA / "seed.jsonl")
    return common_pb2.ArtifactRef(uri=seed.uri, sha256=seed.sha256)


@pytest.fixture(scope="module")
def controller(services):
    return controller_pb2_grpc.ControllerServiceStub(channel(services, "controller"))


@pytest.fixture(scope="module")
def finished_loop(services, controller, tiny_models):
    spec = tiny_spec(tiny_models, seed=LOOP_SEEDS[0])
    loop = controller.StartLoop(controller_pb2.StartLoopRequest(request_id="loop-a", spec=spec)).loop
    request = controller_pb2.WatchLoopRequest(loop_id=loop.loop_id, from_sequence=1)  # every event since the start
    events = [r.event for r in controller.WatchLoop(request, timeout=900)]
    return loop, events


def test_a_tiny_loop_runs_end_to_end_across_five_processes(services, finished_loop):
    loop, events = finished_loop
    final = events[-1].loop
    assert final.state == controller_pb2.LOOP_STATE_SUCCEEDED, final.error_message
    started = [e.stage for e in events if e.kind == controller_pb2.LOOP_EVENT_KIND_STAGE_STARTED and e.iteration == 1]
    finished = [e.stage for e in events if e.kind == controller_pb2.LOOP_EVENT_KIND_STAGE_FINISHED and e.iteration == 1]
    expected = [s for s in ITERATION_STAGES if s in started]  # dpo only runs when pairs formed
    assert started == expected == finished and set(ITERATION_STAGES) - {"dpo"} <= set(started)
    assert [e.sequence for e in events] == list(range(1, len(events) + 1))
    progress = [e for e in events if e.kind == controller_pb2.LOOP_EVENT_KIND_PROGRESS]
    assert progress and all(0 <= e.progress.done <= e.progress.total for e in progress)
    assert {e.stage for e in progress} >= {"warmup-data", "scores", "student"}
    store = services["store"]
    summary = store.get_json(store.key_of(final.summary.uri))
    assert store.digest(store.key_of(final.summary.uri)) == final.summary.sha256
    assert len(summary["iterations"]) == 1 and summary["evaluation"]["baseline_student_eval_loss"] > 0
    assert_rounds_consistent(store, summary, loop.loop_id)
    assert ("dpo" in started) == (summary["iterations"][0]["pairs"] > 0)
    for stage in set(started):
        manifest = store.get_json(f"loops/{loop.loop_id}/iter-1/{stage}/manifest.json")
        for ref in manifest["outputs"].values():
            assert store.ref(store.key_of(ref["uri"])).sha256 == ref["sha256"]


def test_loop_ids_are_idempotent_listed_and_gettable(controller, finished_loop, tiny_models):
    loop, _ = finished_loop
    spec = tiny_spec(tiny_models, seed=LOOP_SEEDS[0])
    again = controller.StartLoop(controller_pb2.StartLoopRequest(request_id="loop-a", spec=spec)).loop
    assert again.loop_id == loop.loop_id
    assert loop.loop_id in [x.loop_id for x in controller.ListLoops(controller_pb2.ListLoopsRequest()).loops]
    assert controller.GetLoop(controller_pb2.GetLoopRequest(loop_id=loop.loop_id)).loop.rounds_completed == 1


def test_two_loops_at_once_both_finish(services, controller, tiny_models, finished_loop):
    # Under both of the suite's loop seeds: whichever rounds form pairs, each loop's rounds are consistent.
    spec = lambda i: tiny_spec(  # noqa: E731
        tiny_models, evaluation={"baseline": False, "shift_samples": 0}, name=f"two{i}", seed=LOOP_SEEDS[1 - i]
    )
    ids = [
        controller.StartLoop(controller_pb2.StartLoopRequest(request_id=f"two-{i}", spec=spec(i))).loop.loop_id
        for i in range(2)
    ]
    results = {}

    def follow(loop_id):
        results[loop_id] = [
            r.event for r in controller.WatchLoop(controller_pb2.WatchLoopRequest(loop_id=loop_id), timeout=900)
        ][-1]

    threads = [threading.Thread(target=follow, args=(i,)) for i in ids]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(set(ids)) == 2
    assert all(results[i].loop.state == controller_pb2.LOOP_STATE_SUCCEEDED for i in ids), [
        results[i].loop.error_message for i in ids
    ]
    store = services["store"]
    for i in ids:
        assert_rounds_consistent(store, store.get_json(store.key_of(results[i].loop.summary.uri)), i)


def test_idempotent_submit_and_conflicting_reuse(services, tiny_models):
    stub = teacher_pb2_grpc.TeacherServiceStub(channel(services, "teacher"))
    store = services["store"]
    request = teacher_pb2.GenerateRequest(
        request_id="gen-1",
        teacher=common_pb2.ModelSpec(path=str(tiny_models[0])),
        seed_set=seed_set(store),
        output_prefix="jobs/gen-1",
        num_prompts=1,
        seed=1,
    )
    first = stub.Generate(request).job
    second = stub.Generate(request).job
    assert first.job_id == second.job_id
    request.num_prompts = 2
    with pytest.raises(grpc.RpcError) as err:
        stub.Generate(request)
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION and "request_id" in err.value.details()
    final = list(stub.WatchJob(common_pb2.WatchJobRequest(job_id=first.job_id), timeout=120))[-1].job
    assert final.state == common_pb2.JOB_STATE_SUCCEEDED and "candidates" in final.outputs


def test_cancel_mid_job_leaves_no_partial_artifact(services, tiny_models):
    stub = teacher_pb2_grpc.TeacherServiceStub(channel(services, "teacher"))
    store = services["store"]
    job = stub.Generate(
        teacher_pb2.GenerateRequest(
            request_id="long",
            teacher=common_pb2.ModelSpec(path=str(tiny_models[0])),
            seed_set=seed_set(store),
            output_prefix="jobs/long",
            num_prompts=5000,
            seed=2,
        )
    ).job
    for event in stub.WatchJob(common_pb2.WatchJobRequest(job_id=job.job_id), timeout=120):
        if event.job.progress.done >= 1:
            break
    stub.CancelJob(common_pb2.CancelJobRequest(job_id=job.job_id))
    final = list(stub.WatchJob(common_pb2.WatchJobRequest(job_id=job.job_id), timeout=60))[-1].job
    assert final.state == common_pb2.JOB_STATE_CANCELLED
    assert final.progress.done < final.progress.total
    assert not store.exists("jobs/long")


BAD_REQUESTS = [
    (
        "teacher",
        "Generate",
        teacher_pb2.GenerateRequest(output_prefix="x", num_prompts=1),
        grpc.StatusCode.INVALID_ARGUMENT,
        "teacher",
    ),
    ("teacher", "Generate", f"MODEL:{REPO / 'models' / 'nope'}", grpc.StatusCode.NOT_FOUND, "teacher.path"),
    ("teacher", "Generate", "MODEL:/etc", grpc.StatusCode.INVALID_ARGUMENT, "teacher.path"),  # outside models/
    ("teacher", "Generate", "SEED:file:///etc/passwd", grpc.StatusCode.INVALID_ARGUMENT, "seed_set.uri"),
    ("teacher", "Generate", "SEED:missing", grpc.StatusCode.NOT_FOUND, "seed_set.uri"),
    ("teacher", "Generate", "SEED:changed", grpc.StatusCode.FAILED_PRECONDITION, "seed_set.sha256"),
    ("teacher", "Generate", "COUNT:-3", grpc.StatusCode.INVALID_ARGUMENT, "num_prompts"),
    ("teacher", "Generate", "COUNT:99999999", grpc.StatusCode.INVALID_ARGUMENT, "num_prompts"),
    ("teacher", "Generate", "PREFIX:../escape", grpc.StatusCode.INVALID_ARGUMENT, "output_prefix"),
    ("teacher", "Generate", "SETTINGS:top_p", grpc.StatusCode.INVALID_ARGUMENT, "synthesis.top_p"),
    ("teacher", "Generate", "VERSION:bad version!", grpc.StatusCode.INVALID_ARGUMENT, "teacher_version"),
    (
        "teacher",
        "LoadTeacherVersion",
        teacher_pb2.LoadTeacherVersionRequest(name="x"),
        grpc.StatusCode.INVALID_ARGUMENT,
        "teacher",
    ),
    (
        "teacher",
        "UnloadTeacherVersion",
        teacher_pb2.UnloadTeacherVersionRequest(name="nope"),
        grpc.StatusCode.NOT_FOUND,
        "name",
    ),
    ("teacher", "GetJob", common_pb2.GetJobRequest(job_id="nope"), grpc.StatusCode.NOT_FOUND, "job_id"),
    ("teacher", "CancelJob", common_pb2.CancelJobRequest(), grpc.StatusCode.INVALID_ARGUMENT, "job_id"),
    ("influence", "Score", influence_pb2.ScoreRequest(), grpc.StatusCode.INVALID_ARGUMENT, "student"),
    (
        "influence",
        "Evaluate",
        influence_pb2.EvaluateRequest(model=common_pb2.ModelSpec(path="/a", artifact=common_pb2.ArtifactRef(uri="b"))),
        grpc.StatusCode.INVALID_ARGUMENT,
        "model",
    ),
    ("influence", "MergeScores", influence_pb2.MergeScoresRequest(), grpc.StatusCode.INVALID_ARGUMENT, "shards"),
    (
        "preference",
        "Assemble",
        preference_pb2.AssembleRequest(candidates=common_pb2.ArtifactRef(uri="s3://elsewhere/x")),
        grpc.StatusCode.INVALID_ARGUMENT,
        "candidates.uri",
    ),
    (
        "preference",
        "Assemble",
        preference_pb2.AssembleRequest(preference=preference_pb2.PreferenceSettings(min_margin=-1), validate_only=True),
        grpc.StatusCode.INVALID_ARGUMENT,
        "preference.min_margin",
    ),
    (
        "trainer",
        "TrainTeacher",
        trainer_pb2.TrainTeacherRequest(teacher=common_pb2.ModelSpec(path=str(REPO / "models" / "missing"))),
        grpc.StatusCode.NOT_FOUND,
        "teacher.path",
    ),
    ("trainer", "TrainStudent", "SFT:batch_size=-1", grpc.StatusCode.INVALID_ARGUMENT, "sft.batch_size"),
    ("controller", "GetLoop", controller_pb2.GetLoopRequest(loop_id="nope"), grpc.StatusCode.NOT_FOUND, "loop_id"),
    ("controller", "StartLoop", controller_pb2.StartLoopRequest(), grpc.StatusCode.INVALID_ARGUMENT, "spec"),
    ("controller", "StartLoop", "SPEC:iterations=-2", grpc.StatusCode.INVALID_ARGUMENT, "spec.config.iterations"),
    (
        "controller",
        "StartLoop",
        "SPEC:influence.optimizer=adam",
        grpc.StatusCode.INVALID_ARGUMENT,
        "spec.config.influence.optimizer",
    ),
    (
        "controller",
        "StartLoop",
        "SPEC:warmup.lr_scheduler=cosine",
        grpc.StatusCode.INVALID_ARGUMENT,
        "spec.config.warmup.lr_scheduler",
    ),
    ("controller", "StartLoop", "SPEC:dpo.lora_rank=0", grpc.StatusCode.INVALID_ARGUMENT, "spec.config.dpo.lora_rank"),
    (
        "controller",
        "StartLoop",
        f"SPEC:models.teacher={REPO / 'models' / 'nope'}",
        grpc.StatusCode.NOT_FOUND,
        "spec.config.models.teacher",
    ),
    (
        "controller",
        "StartLoop",
        "SPEC:models.teacher=/etc",
        grpc.StatusCode.INVALID_ARGUMENT,
        "spec.config.models.teacher",
    ),
    (
        "controller",
        "StartLoop",
        "SPEC:artifacts=file:///elsewhere",
        grpc.StatusCode.INVALID_ARGUMENT,
        "spec.config.artifacts",
    ),
]


def _bad_request(kind: str, services, tiny_models):
    store = services["store"]
    tag, _, value = kind.partition(":")
    gen = dict(
        request_id="",
        teacher=common_pb2.ModelSpec(path=str(tiny_models[0])),
        seed_set=seed_set(store),
        output_prefix="jobs/bad",
        num_prompts=1,
    )
    if tag == "MODEL":
        gen["teacher"] = common_pb2.ModelSpec(path=value)
    elif tag == "SEED":
        if value == "changed":  # a digest the artifact no longer has
            gen["seed_set"] = common_pb2.ArtifactRef(uri=gen["seed_set"].uri, sha256="0" * 64)
        else:
            gen["seed_set"] = common_pb2.ArtifactRef(uri=value if "://" in value else store.uri("inputs/missing.jsonl"))
    elif tag == "COUNT":
        gen["num_prompts"] = int(value)
    elif tag == "PREFIX":
        gen["output_prefix"] = value
    elif tag == "SETTINGS":
        gen["synthesis"] = teacher_pb2.SynthesisSettings(**{value: 0.0})
    elif tag == "VERSION":
        gen["teacher_version"] = value
    elif tag == "SFT":
        key, _, number = value.partition("=")
        (tmp := store.put_jsonl("inputs/c.jsonl", [{"instruction": "a", "response": "b"}]))
        return trainer_pb2.TrainStudentRequest(
            student=common_pb2.ModelSpec(path=str(tiny_models[1])),
            candidates=common_pb2.ArtifactRef(uri=tmp.uri),
            output_prefix="jobs/sft",
            sft=trainer_pb2.SFTSettings(**{key: int(number)}),
        )
    elif tag == "SPEC":
        key, _, raw = value.partition("=")
        document = tiny_document(tiny_models)
        if "." in key:
            section, name = key.split(".")
            document[section] = {**document.get(section, {}), name: yaml.safe_load(raw)}
        else:
            document[key] = yaml.safe_load(raw)
        return controller_pb2.StartLoopRequest(request_id="", spec=loop_spec(document))
    return teacher_pb2.GenerateRequest(**gen)


STUBS = {
    "teacher": teacher_pb2_grpc.TeacherServiceStub,
    "influence": influence_pb2_grpc.InfluenceServiceStub,
    "preference": preference_pb2_grpc.PreferenceServiceStub,
    "trainer": trainer_pb2_grpc.TrainerServiceStub,
    "controller": controller_pb2_grpc.ControllerServiceStub,
}


@pytest.mark.parametrize(
    "service,method,request_or_kind,code,field",
    BAD_REQUESTS,
    ids=[f"{s}.{m}-{f}-{i}" for i, (s, m, _, _, f) in enumerate(BAD_REQUESTS)],
)
def test_bad_input_gets_the_right_status_and_names_the_field(
    services, tiny_models, service, method, request_or_kind, code, field
):
    request = (
        _bad_request(request_or_kind, services, tiny_models) if isinstance(request_or_kind, str) else request_or_kind
    )
    stub = STUBS[service](channel(services, service))
    with pytest.raises(grpc.RpcError) as err:
        getattr(stub, method)(request, timeout=60)
    assert err.value.code() == code, err.value.details()
    assert err.value.details().startswith(field), err.value.details()
    assert "Traceback" not in err.value.details()
    # ... and the service keeps serving.
    from common.health import health_status

    assert health_status(f"127.0.0.1:{services['ports'][service]}") == "SERVING"


def test_reflection_lists_the_service(services):
    from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

    stub = reflection_pb2_grpc.ServerReflectionStub(channel(services, "influence"))
    responses = stub.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")]))
    names = {s.name for r in responses for s in r.list_services_response.service}
    assert {"montessori.v1.InfluenceService", "grpc.health.v1.Health"} <= names


def test_metrics_endpoint_counts_finished_jobs(services, finished_loop):
    body = (
        urllib.request.urlopen(f"http://127.0.0.1:{services['metrics']['influence']}/metrics", timeout=10)
        .read()
        .decode()
    )
    assert 'montessori_jobs_total{kind="score",service="influence",state="succeeded"}' in body
    assert "montessori_job_duration_seconds_bucket" in body
    assert 'montessori_throughput{metric="candidates_per_second",service="influence"}' in body


def test_logs_are_json_lines_without_credentials(services, finished_loop):
    lines = [
        line for line in (Path(services["logs"]) / "controller.log").read_text().splitlines() if line.startswith("{")
    ]
    entries = [json.loads(line) for line in lines]
    assert any(e.get("msg") == "stage done" and e.get("loop_id") for e in entries)
    # The S3 secret appears in no log, manifest or summary.
    secret = services["env"]["MINIO_SECRET_KEY"]
    for log in Path(services["logs"]).glob("*.log"):
        assert secret not in log.read_text(errors="replace"), log.name
    store = services["store"]
    loop, _ = finished_loop
    for key in store.list(f"loops/{loop.loop_id}"):
        if key.endswith(".json"):
            assert secret not in store.get_bytes(key).decode(), key


def test_deadlines_are_honoured(services, tiny_models):
    stub = teacher_pb2_grpc.TeacherServiceStub(channel(services, "teacher"))
    store = services["store"]
    job = stub.Generate(
        teacher_pb2.GenerateRequest(
            request_id="deadline",
            teacher=common_pb2.ModelSpec(path=str(tiny_models[0])),
            seed_set=seed_set(store),
            output_prefix="jobs/deadline",
            num_prompts=5000,
        )
    ).job
    with pytest.raises(grpc.RpcError) as err:
        for _ in stub.WatchJob(common_pb2.WatchJobRequest(job_id=job.job_id), timeout=0.5):
            pass
    assert err.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    stub.CancelJob(common_pb2.CancelJobRequest(job_id=job.job_id))
    final = list(stub.WatchJob(common_pb2.WatchJobRequest(job_id=job.job_id), timeout=60))[-1].job
    assert final.state == common_pb2.JOB_STATE_CANCELLED
