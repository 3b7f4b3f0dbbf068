"""Health while loading, and graceful SIGTERM during a job (single service processes)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import grpc

from cli.local_services import wait_serving
from common.artifacts import LocalArtifactStore
from common.health import health_status
from montessori.v1 import common_pb2, teacher_pb2, teacher_pb2_grpc
from tests.conftest import DATA, REPO
from tests.integration.conftest import free_ports


def start_teacher(store, *extra):
    """A teacher process whose output goes to a file (a pipe nobody drains could block it)."""
    port = free_ports(1)[0]
    # the child gets its own copy of the descriptor: closing ours once it is started is safe
    with open(Path(store) / f"teacher-{port}.log", "wb") as log:
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
                str(store),
                "--grace",
                "60",
                *extra,
            ],
            cwd=REPO,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    process.log_path = log.name
    return port, process


def test_health_is_serving_only_after_the_model_loads(tmp_path, tiny_models):
    port, process = start_teacher(tmp_path, "--preload", str(REPO / "models" / "smollm2-135m-instruct"))
    address = f"127.0.0.1:{port}"
    seen = []
    unavailable = None
    try:
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            status = health_status(address)
            if not seen or seen[-1] != status:
                seen.append(status)
            if status == "NOT_SERVING" and unavailable is None:
                stub = teacher_pb2_grpc.TeacherServiceStub(grpc.insecure_channel(address))
                try:
                    stub.Generate(teacher_pb2.GenerateRequest(num_prompts=1), timeout=5)
                except grpc.RpcError as err:
                    unavailable = err
            if status == "SERVING":
                break
            time.sleep(0.05)
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=60)
        output = Path(process.log_path).read_text()
    assert seen[-1] == "SERVING"
    assert "NOT_SERVING" in seen, seen
    assert unavailable is not None and unavailable.code() == grpc.StatusCode.UNAVAILABLE
    assert "still loading" in unavailable.details()
    assert output.index('"msg": "listening"') < output.index('"msg": "serving"')


def test_sigterm_during_a_job_cancels_it_cleanly(tmp_path, tiny_models):
    store = LocalArtifactStore(tmp_path)
    seed = store.put_file("inputs/seed.jsonl", DATA / "seed.jsonl")
    seed_set = common_pb2.ArtifactRef(uri=seed.uri, sha256=seed.sha256)
    port, process = start_teacher(tmp_path)
    try:
        wait_serving(f"127.0.0.1:{port}", timeout=120, process=process)
        stub = teacher_pb2_grpc.TeacherServiceStub(grpc.insecure_channel(f"127.0.0.1:{port}"))
        job = stub.Generate(
            teacher_pb2.GenerateRequest(
                request_id="r",
                teacher=common_pb2.ModelSpec(path=str(tiny_models[0])),
                seed_set=seed_set,
                output_prefix="jobs/long",
                num_prompts=5000,
            )
        ).job
        for event in stub.WatchJob(common_pb2.WatchJobRequest(job_id=job.job_id), timeout=120):
            if event.job.progress.done >= 1:
                break
        started = time.monotonic()
        os.kill(process.pid, signal.SIGTERM)
        code = process.wait(timeout=60)
        elapsed = time.monotonic() - started
    finally:
        if process.poll() is None:
            process.kill()
    output = Path(process.log_path).read_text()
    assert code == 0, output[-3000:]
    assert elapsed < 45, output[-3000:]  # the job stops at its next unit, well inside the 60 s grace period
    assert '"state": "CANCELLED"' in output and '"msg": "stopped"' in output, output[-3000:]
    assert "Traceback" not in output, output[-3000:]
    assert not store.exists("jobs/long")
