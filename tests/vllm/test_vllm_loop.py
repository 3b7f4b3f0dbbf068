"""A whole loop through the five services with the vLLM teacher: after the DPO round the new
adapter is hot-swapped into the running engine, passes the canary, and writes the training
set; the controller records which version wrote it."""

from __future__ import annotations

import json

import grpc
import pytest
import yaml

from cli.local_services import ORDER, start_services, stop_services
from common.artifacts import LocalArtifactStore
from common.protoconv import loop_spec
from montessori.v1 import controller_pb2, controller_pb2_grpc
from tests.conftest import DATA, LOOP_SEEDS, REPO
from tests.integration.conftest import free_ports
from tests.loop_invariants import assert_rounds_consistent

MAIN_PYTHON = str(REPO / ".venv" / "bin" / "python")


@pytest.fixture(scope="module")
def services(tmp_path_factory):
    root = tmp_path_factory.mktemp("vllm-loop")
    ports = dict(zip(ORDER, free_ports(len(ORDER))))
    # The teacher runs from this (vLLM) environment, every other service from the main one.
    python = {name: MAIN_PYTHON for name in ORDER if name != "teacher"}
    processes = start_services(
        artifacts=str(root / "store"),
        ports=ports,
        log_dir=root / "logs",
        python=python,
        extra={"teacher": ["--backend", "vllm"]},
        timeout=300,
        env={"MONTESSORI_TORCH_THREADS": "1", "MONTESSORI_CACHE_DIR": str(root / "cache")},
    )
    yield {"ports": ports, "store": LocalArtifactStore(root / "store"), "logs": root / "logs"}
    assert set(stop_services(processes, timeout=60).values()) == {0}


def test_a_loop_hot_swaps_the_dpo_adapter_into_the_running_engine(services, base_model):
    overrides = yaml.safe_load((REPO / "configs" / "vllm-teacher.yaml").read_text())
    overrides.update(
        name="vllm",
        iterations=1,
        models={"teacher": base_model, "student": str(REPO / "models" / "tiny-student")},
        data={
            "seed_path": str(DATA / "seed.jsonl"),
            "reference_path": str(DATA / "reference.jsonl"),
            "eval_path": str(DATA / "eval.jsonl"),
        },
    )
    overrides["sizes"]["probe_prompts"] = 8  # 32 samples: a round that forms pairs (and hot-swaps) most draws
    overrides["seed"] = LOOP_SEEDS[0]
    spec = loop_spec(overrides)
    with grpc.insecure_channel(f"127.0.0.1:{services['ports']['controller']}") as channel:
        controller = controller_pb2_grpc.ControllerServiceStub(channel)
        loop = controller.StartLoop(controller_pb2.StartLoopRequest(request_id="vllm-loop", spec=spec)).loop
        final = list(controller.WatchLoop(controller_pb2.WatchLoopRequest(loop_id=loop.loop_id), timeout=1200))[
            -1
        ].event.loop
    assert final.state == controller_pb2.LOOP_STATE_SUCCEEDED, final.error_message

    store = services["store"]
    summary = store.get_json(store.key_of(final.summary.uri))
    (row,) = summary["iterations"]
    assert_rounds_consistent(store, summary, loop.loop_id)
    manifest = store.get_json(f"loops/{loop.loop_id}/iter-1/train-data/manifest.json")
    served = manifest["inputs"]["teacher"]["served"]
    probe = store.get_json(f"loops/{loop.loop_id}/iter-1/probe-data/manifest.json")
    assert probe["inputs"]["teacher"]["label"] == "teacher-r0"
    log = [
        json.loads(line) for line in (services["logs"] / "teacher.log").read_text().splitlines() if line.startswith("{")
    ]
    assert sum(entry["msg"] == "vLLM engine started" for entry in log) == 1  # hot-swapped, never restarted
    serving = [e["metrics"]["name"] for e in log if e["msg"] == "teacher version serving"]
    # Whether this draw formed pairs is not the test's business (a version hot-swapped in by the service is
    # constructed in test_vllm_service.py): with pairs, DPO's adapter was swapped in, passed the canary and wrote
    # the training set; without, the base version wrote it and no version was loaded.
    if row["pairs"]:
        assert row["teacher_version"] == f"{loop.loop_id}:teacher-r1" == served["name"] and serving == [served["name"]]
        assert served["canary"]["passed"] and served["backend"] == "vllm"
        assert served["model"]["adapters"][0].endswith(f"loops/{loop.loop_id}/iter-1/dpo/adapter")
    else:
        assert row["teacher_unchanged_reason"] and not served.get("model", {}).get("adapters")
        assert f"{loop.loop_id}:teacher-r1" not in serving
