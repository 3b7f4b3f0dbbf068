"""Resume: a loop killed mid-way continues from its last completed stage and ends with the same artifacts."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time

import grpc
import pytest

from cli.local import local_runner
from cli.local_services import wait_serving
from common.artifacts import LocalArtifactStore
from common.config import load_config
from common.errors import Cancelled
from common.lineage import garbage
from montessori.v1 import controller_pb2, controller_pb2_grpc
from services.controller.config import RunConfig
from tests.conftest import REPO
from tests.integration.test_services import tiny_spec

TINY = REPO / "configs" / "tiny.yaml"
QUICK = ["iterations=1", "evaluation.shift_samples=2"]


def output_digests(store, loop_id: str) -> dict[str, str]:
    """Content digests of every file of every stage output of a loop (data files, and every file of a model or
    adapter folder: weights, configs, tokenizer), keyed by the stage path inside the loop, so two loops can be
    compared. Training reports (``runs/``, wall-clock event files) are the one exception."""
    out = {}
    for key in store.list(f"loops/{loop_id}"):
        if not key.endswith("manifest.json"):
            continue
        manifest = store.get_json(key)
        stage = key.removeprefix(f"loops/{loop_id}/").removesuffix("/manifest.json")
        for role, ref in manifest["outputs"].items():
            path = store.local_path(store.key_of(ref["uri"]))
            files = (
                sorted(p for p in path.rglob("*") if p.is_file() and "runs" not in p.relative_to(path).parts)
                if path.is_dir()
                else [path]
            )
            for file in files:
                name = file.relative_to(path).as_posix() if path.is_dir() else file.name
                out[f"{stage}/{role}/{name}"] = hashlib.sha256(file.read_bytes()).hexdigest()
    return out


@pytest.fixture(scope="module")
def reference_run(tiny_models, tmp_path_factory):
    root = tmp_path_factory.mktemp("reference-run")
    config = load_config(RunConfig, TINY, [f"artifacts={root}", "loop_id=ref", *QUICK])
    summary = local_runner(config).run()
    return LocalArtifactStore(root), summary


def test_in_process_resume_reuses_completed_stages_and_matches(reference_run, tmp_path):
    store_ref, _ = reference_run
    config = load_config(RunConfig, TINY, [f"artifacts={tmp_path}", "loop_id=ref", *QUICK])
    finished = []
    interrupted = local_runner(
        config,
        on_event=lambda kind, it, stage, **k: finished.append(stage) if kind == "stage_finished" else None,
        should_stop=lambda: len(finished) >= 4,
        interrupted=lambda: True,
    )
    with pytest.raises(Cancelled):
        interrupted.run()
    state = json.loads((tmp_path / "loops/ref/state.json").read_text())
    assert state["status"] == "running" and len(state["stages"]) == 4
    reused = []
    resumed = local_runner(
        config,
        on_event=lambda kind, it, stage, metrics=None, **k: (
            reused.append(stage) if kind == "stage_finished" and metrics and metrics.get("reused") else None
        ),
    )
    summary = resumed.run()
    assert reused == finished  # the four completed stages were not recomputed
    assert not summary["stopped"]
    assert output_digests(LocalArtifactStore(tmp_path), "ref") == output_digests(store_ref, "ref")


def test_gc_dry_run_then_real(reference_run, tiny_models, tmp_path):
    config = load_config(
        RunConfig, TINY, [f"artifacts={tmp_path}", "loop_id=a", "iterations=1", "evaluation.baseline=false"]
    )
    local_runner(config).run()
    store = LocalArtifactStore(tmp_path)
    store.put_bytes("jobs/orphan.json", b"{}")  # written outside any loop
    store.put_bytes("experiments/e/experiment.json", b"{}")  # a result: never garbage
    store.put_bytes("models/m/0123/config.json", b"{}")  # a pushed model: the user's input, never garbage
    store.put_bytes("data/0123/seed.jsonl", b"{}\n")  # uploaded data: the same
    store.put_bytes("loops/a/iter-9/crashed/candidates.jsonl", b"{}\n")  # a stage that never published its manifest
    before = store.list()
    doomed = garbage(store)
    assert sorted(doomed) == ["jobs/orphan.json", "loops/a/iter-9/crashed/candidates.jsonl"]
    out = subprocess.run(
        [sys.executable, "-m", "cli.main", "artifacts", "--store", str(tmp_path), "gc"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0 and "would delete" in out.stdout and store.list() == before  # dry run: nothing removed
    out = subprocess.run(
        [sys.executable, "-m", "cli.main", "artifacts", "--store", str(tmp_path), "gc", "--delete"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0
    assert sorted(set(before) - set(store.list())) == sorted(doomed)
    assert garbage(store, keep=["other"]) == [
        k for k in store.list() if not k.startswith(("experiments/", "models/", "data/"))
    ]  # all of loop a
    assert "loops/a/rounds.jsonl" in store.list()


def start_service(name, ports, env, store_uri, log):
    command = [
        sys.executable,
        "-m",
        "cli.main",
        "serve",
        name,
        "--insecure",
        "--port",
        str(ports[name]),
        "--artifacts",
        store_uri,
        "--grace",
        "5",
    ]
    if name == "controller":
        for worker in ("teacher", "influence", "preference", "trainer"):
            command += [f"--{worker}", f"127.0.0.1:{ports[worker]}"]
    return subprocess.Popen(
        command, cwd=REPO, env={**os.environ, **env}, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
    )


@pytest.mark.parametrize("kill_after", [3, 7])
def test_sigkill_the_controller_mid_loop_and_resume_with_the_same_artifacts(
    services, tiny_models, kill_after, tmp_path
):
    """The controller is SIGKILLed after ``kill_after`` finished stages, a new one starts on the same store
    (as it would on another machine), picks the loop up, and the final artifacts equal an uninterrupted run's."""
    store, ports, env = services["store"], services["ports"], services["env"]
    controller = services["processes"]["controller"]
    stub = controller_pb2_grpc.ControllerServiceStub(grpc.insecure_channel(f"127.0.0.1:{ports['controller']}"))
    spec = lambda name: tiny_spec(tiny_models, name=name, iterations=1, evaluation={"shift_samples": 2})  # noqa: E731
    clean = stub.StartLoop(controller_pb2.StartLoopRequest(request_id=f"clean-{kill_after}", spec=spec("clean"))).loop
    list(stub.WatchLoop(controller_pb2.WatchLoopRequest(loop_id=clean.loop_id), timeout=600))
    loop = stub.StartLoop(controller_pb2.StartLoopRequest(request_id=f"killed-{kill_after}", spec=spec("killed"))).loop
    finished = 0
    for response in stub.WatchLoop(controller_pb2.WatchLoopRequest(loop_id=loop.loop_id, from_sequence=1), timeout=600):
        finished += response.event.kind == controller_pb2.LOOP_EVENT_KIND_STAGE_FINISHED
        if finished >= kill_after:
            os.killpg(controller.pid, signal.SIGKILL)
            break
    controller.wait(timeout=30)
    with open(tmp_path / "controller.log", "ab") as log:
        controller = services["processes"]["controller"] = start_service("controller", ports, env, store.root_uri, log)
    wait_serving(f"127.0.0.1:{ports['controller']}", timeout=120, process=controller)
    stub = controller_pb2_grpc.ControllerServiceStub(grpc.insecure_channel(f"127.0.0.1:{ports['controller']}"))
    # From the first event: the resumed loop reports its reused stages before this watch may begin.
    request = controller_pb2.WatchLoopRequest(loop_id=loop.loop_id, from_sequence=1)
    events = [r.event for r in stub.WatchLoop(request, timeout=600)]
    assert events[-1].loop.state == controller_pb2.LOOP_STATE_SUCCEEDED, events[-1].loop.error_message
    finished = [e for e in events if e.kind == controller_pb2.LOOP_EVENT_KIND_STAGE_FINISHED]
    reused = [e.stage for e in finished if e.metrics.get("reused")]
    assert len(reused) >= kill_after - 1  # completed stages were not recomputed (the one in flight may have been)
    assert output_digests(store, loop.loop_id) == output_digests(store, clean.loop_id)


def test_sigkill_a_worker_mid_job_and_the_loop_still_finishes_the_same(services, tiny_models, tmp_path):
    """The influence worker dies while scoring; once it is back, the controller resubmits the job
    (same request id) and the loop ends with the same artifacts as an uninterrupted one."""
    store, ports, env = services["store"], services["ports"], services["env"]
    stub = controller_pb2_grpc.ControllerServiceStub(grpc.insecure_channel(f"127.0.0.1:{ports['controller']}"))
    spec = lambda name: tiny_spec(
        tiny_models, name=name, iterations=1, evaluation={"baseline": False, "shift_samples": 0}
    )  # noqa: E731
    clean = stub.StartLoop(controller_pb2.StartLoopRequest(request_id="w-clean", spec=spec("wclean"))).loop
    list(stub.WatchLoop(controller_pb2.WatchLoopRequest(loop_id=clean.loop_id), timeout=600))
    loop = stub.StartLoop(controller_pb2.StartLoopRequest(request_id="w-killed", spec=spec("wkilled"))).loop
    events = stub.WatchLoop(controller_pb2.WatchLoopRequest(loop_id=loop.loop_id), timeout=600)
    for response in events:
        if response.event.kind == controller_pb2.LOOP_EVENT_KIND_PROGRESS and response.event.stage == "scores":
            os.killpg(services["processes"]["influence"].pid, signal.SIGKILL)
            break
    services["processes"]["influence"].wait(timeout=30)
    time.sleep(1.0)
    with open(tmp_path / "influence.log", "ab") as log:
        services["processes"]["influence"] = start_service("influence", ports, env, store.root_uri, log)
    final = [r.event for r in stub.WatchLoop(controller_pb2.WatchLoopRequest(loop_id=loop.loop_id), timeout=600)][-1]
    assert final.loop.state == controller_pb2.LOOP_STATE_SUCCEEDED, final.loop.error_message
    assert output_digests(store, loop.loop_id) == output_digests(store, clean.loop_id)


def test_a_failed_loop_is_recorded_failed_and_not_resumed_on_restart(tiny_models, tmp_path):
    from common.errors import FailedPrecondition
    from services.controller.loops import LoopManager

    config = load_config(RunConfig, TINY, [f"artifacts={tmp_path}", "loop_id=broken", *QUICK])
    runner = local_runner(config)

    from montessori.v1 import trainer_pb2

    run = runner.executor.run

    def refuse(request, progress):
        if isinstance(request, trainer_pb2.TrainTeacherRequest):
            raise FailedPrecondition("canary refused teacher version", field="teacher_version")
        return run(request, progress)

    runner.executor.run = refuse  # fault injection: the DPO stage fails
    with pytest.raises(FailedPrecondition):
        runner.run()
    state = json.loads((tmp_path / "loops/broken/state.json").read_text())
    assert state["status"] == "failed" and "canary refused" in state["error"]
    assert LoopManager(LocalArtifactStore(tmp_path), lambda loop_id: None).resume_all() == []
