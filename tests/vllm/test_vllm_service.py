"""The teacher service started from the vLLM environment with ``--backend vllm``, over gRPC:
a new teacher version is hot-swapped into the running engine and generates, and the
manifest records which version (adapter digest, canary) wrote the set."""

from __future__ import annotations

import subprocess
import sys

import grpc
import pytest
import yaml

from cli.local_services import stop_services, wait_serving
from common.artifacts import LocalArtifactStore
from montessori.v1 import common_pb2, teacher_pb2, teacher_pb2_grpc
from services.teacher.adapters import chain_digest
from tests.conftest import DATA, REPO
from tests.integration.conftest import free_ports


@pytest.fixture(scope="module")
def teacher(base_model, tmp_path_factory):
    root = tmp_path_factory.mktemp("vllm-service")
    config = root / "teacher.yaml"
    config.write_text(
        yaml.safe_dump({"backend": "vllm", "vllm": {"dtype": "float32", "max_model_len": 1024, "canary_tokens": 8}})
    )
    port = free_ports(1)[0]
    log = root / "teacher.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "cli.main",
                "serve",
                "teacher",
                "--insecure",
                "--port",
                str(port),
                "--artifacts",
                str(root / "store"),
                "--teacher-config",
                str(config),
                "--preload",
                base_model,
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            cwd=REPO,
            env={**__import__("os").environ, "MONTESSORI_CACHE_DIR": str(root / "cache")},
        )
    try:
        wait_serving(f"127.0.0.1:{port}", timeout=240, process=process)
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            yield {
                "stub": teacher_pb2_grpc.TeacherServiceStub(channel),
                "store": LocalArtifactStore(root / "store"),
                "log": log,
                "process": process,
            }
    finally:
        assert stop_services({"teacher": process}, timeout=60)["teacher"] == 0


def test_a_version_is_hot_swapped_in_and_writes_a_candidate_set(teacher, base_model, adapters):
    stub, store = teacher["stub"], teacher["store"]
    adapter = store.put_dir("loops/x/iter-1/dpo/adapter", adapters[0])
    seed = store.put_file("inputs/seed.jsonl", DATA / "seed.jsonl")
    spec = common_pb2.ModelSpec(
        path=base_model, adapters=[common_pb2.ArtifactRef(uri=adapter.uri, sha256=adapter.sha256)]
    )

    loaded = stub.LoadTeacherVersion(
        teacher_pb2.LoadTeacherVersionRequest(name="x:teacher-r1", teacher=spec), timeout=240
    )
    assert loaded.version.backend == "vllm" and loaded.version.canary.passed and loaded.version.rank == 8
    assert loaded.version.canary.max_abs_diff <= loaded.version.canary.tolerance

    request = teacher_pb2.GenerateRequest(
        request_id="x:gen-r1",
        teacher=spec,
        teacher_label="teacher-r1",
        teacher_version="x:teacher-r1",
        seed_set=common_pb2.ArtifactRef(uri=seed.uri, sha256=seed.sha256),
        output_prefix="loops/x/iter-2/probe-data",
        num_prompts=1,
        seed=5,
        synthesis=teacher_pb2.SynthesisSettings(max_new_tokens=24, response_max_new_tokens=24),
    )
    job = stub.Generate(request).job
    final = list(stub.WatchJob(common_pb2.WatchJobRequest(job_id=job.job_id), timeout=240))[-1].job
    assert final.state == common_pb2.JOB_STATE_SUCCEEDED, final.error_message
    manifest = store.get_json(store.key_of(final.manifest.uri))
    served = manifest["inputs"]["teacher"]["served"]
    assert served["name"] == "x:teacher-r1" and served["backend"] == "vllm"
    assert served["adapter_digest"] == chain_digest((str(store.local_path("loops/x/iter-1/dpo/adapter")),))
    assert served["canary"]["passed"]
    rows = store.get_jsonl("loops/x/iter-2/probe-data/candidates.jsonl")
    assert all(r["teacher"] == "teacher-r1" for r in rows)

    listed = stub.ListTeacherVersions(teacher_pb2.ListTeacherVersionsRequest()).versions
    assert [v.name for v in listed] == ["x:teacher-r1"]
    stub.UnloadTeacherVersion(teacher_pb2.UnloadTeacherVersionRequest(name="x:teacher-r1"))
    assert not stub.ListTeacherVersions(teacher_pb2.ListTeacherVersionsRequest()).versions

    # One engine for the service's whole life: versions come and go without a restart.
    starts = [line for line in teacher["log"].read_text().splitlines() if "vLLM engine started" in line]
    assert len(starts) == 1 and teacher["process"].poll() is None


@pytest.mark.parametrize(
    "name, uri, code, field",
    [
        ("bad name!", None, grpc.StatusCode.INVALID_ARGUMENT, "name"),
        ("ok", "missing/adapter", grpc.StatusCode.NOT_FOUND, "teacher"),
    ],
)
def test_bad_load_requests_are_refused_with_the_field_named(teacher, base_model, name, uri, code, field):
    store = teacher["store"]
    spec = common_pb2.ModelSpec(path=base_model, adapters=[common_pb2.ArtifactRef(uri=store.uri(uri))] if uri else [])
    with pytest.raises(grpc.RpcError) as err:
        teacher["stub"].LoadTeacherVersion(teacher_pb2.LoadTeacherVersionRequest(name=name, teacher=spec), timeout=60)
    assert err.value.code() == code and err.value.details().startswith(field), err.value.details()


def test_unloading_an_unknown_version_is_not_found(teacher):
    with pytest.raises(grpc.RpcError) as err:
        teacher["stub"].UnloadTeacherVersion(teacher_pb2.UnloadTeacherVersionRequest(name="nope"))
    assert err.value.code() == grpc.StatusCode.NOT_FOUND and err.value.details().startswith("name")
