"""Influence scoring split across two real influence processes equals the single-process scores."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

from cli.local import LocalExecutor
from cli.local_services import wait_serving
from montessori.v1 import common_pb2, influence_pb2
from services.controller.remote import RemoteExecutor, WorkerAddresses, influence_replicas
from tests.conftest import DATA, REPO
from tests.integration.conftest import free_ports


@pytest.fixture()
def second_influence(services, tmp_path):
    port = free_ports(1)[0]
    with open(tmp_path / "influence-2.log", "ab") as log:
        process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "cli.main",
                "serve",
                "influence",
                "--insecure",
                "--port",
                str(port),
                "--artifacts",
                services["store"].root_uri,
            ],
            cwd=REPO,
            env={**os.environ, **services["env"]},
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    wait_serving(f"127.0.0.1:{port}", timeout=120, process=process)
    yield f"127.0.0.1:{port}"
    process.terminate()
    process.wait(timeout=30)


def test_sharded_scores_equal_single_process_scores(services, tiny_models, second_influence, seed_rows):
    store, ports = services["store"], services["ports"]
    first = f"127.0.0.1:{ports['influence']}"
    warmup = store.put_dir("shard-test/warmup", tiny_models[1])
    reference = store.put_file("shard-test/reference.jsonl", DATA / "reference.jsonl")
    candidates = store.put_jsonl(
        "shard-test/candidates.jsonl",
        [
            {"id": f"c{i}", "group_id": f"g{i // 3}", "instruction": r["instruction"], "response": r["output"]}
            for i, r in enumerate(seed_rows[60:71])
        ],
    )
    settings = influence_pb2.InfluenceSettings(optimizer="sgd", sgd_learning_rate=0.05, reference_size=8)
    ref = lambda artifact: common_pb2.ArtifactRef(uri=artifact.uri, sha256=artifact.sha256)  # noqa: E731
    addresses = lambda influence: WorkerAddresses(teacher="-", influence=influence, preference="-", trainer="-")  # noqa: E731
    assert influence_replicas(f"{first},{second_influence}") == [first, second_influence]

    def scores(executor, prefix):
        result = executor.run(
            influence_pb2.ScoreRequest(
                student=common_pb2.ModelSpec(artifact=ref(warmup)),
                reference=ref(reference),
                candidates=ref(candidates),
                output_prefix=prefix,
                influence=settings,
            )
        )
        return result, [(r["id"], r["influence"]) for r in store.get_jsonl(store.key_of(result.outputs["scores"].uri))]

    sharded, sharded_rows = scores(
        RemoteExecutor(store, addresses(f"{first},{second_influence}"), request_prefix="s2"), "shard-test/two"
    )
    single, single_rows = scores(RemoteExecutor(store, addresses(first), request_prefix="s1"), "shard-test/one")
    _, local_rows = scores(LocalExecutor(store), "shard-test/local")
    assert sharded.metrics["replicas"] == 2 and len(sharded_rows) == 11
    assert sharded_rows == single_rows  # same ids, same order, bit-identical influences
    assert [i for i, _ in local_rows] == [i for i, _ in single_rows]
    # Another process may reduce in another order: a few fp32 roundings of the reference loss apart, at most.
    tolerance = 64 * torch.finfo(torch.float32).eps * single.metrics["reference_loss"]
    assert [v for _, v in local_rows] == pytest.approx([v for _, v in single_rows], rel=0, abs=tolerance)
    shard_manifests = store.get_json("shard-test/two/manifest.json")["inputs"]["shards"]
    assert len(shard_manifests) == 2
    sizes = [store.get_json(store.key_of(m["uri"]))["metrics"]["candidates"] for m in shard_manifests]
    assert sizes == [5, 6] or sizes == [6, 5]
