"""Fixtures that start real service processes on loopback."""

from __future__ import annotations

import socket
import uuid
from pathlib import Path

import pytest

from cli.local_services import ORDER, start_services, stop_services


def free_ports(n: int) -> list[int]:
    sockets = []
    for _ in range(n):
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        sockets.append(s)
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


def s3_bucket_store(s3_server, cache: Path, bucket: str):
    from common.s3_store import S3ArtifactStore

    return S3ArtifactStore(
        endpoint=s3_server.endpoint,
        access_key=s3_server.access_key,
        secret_key=s3_server.secret_key,
        bucket=bucket,
        cache_dir=cache,
    )


@pytest.fixture(scope="module")
def services(tiny_models, tmp_path_factory, s3_server):
    """The five services as separate OS processes sharing one S3 bucket on the test S3 server."""
    root = tmp_path_factory.mktemp("services")
    bucket = f"svc-{uuid.uuid4().hex[:10]}"
    store = s3_bucket_store(s3_server, root / "test-cache", bucket)
    ports = dict(zip(ORDER, free_ports(len(ORDER))))
    metrics = dict(zip(ORDER, free_ports(len(ORDER))))
    env = {"MONTESSORI_TORCH_THREADS": "1", **s3_server.env(root / "node-cache")}
    processes = start_services(
        artifacts=store.root_uri, ports=ports, log_dir=root / "logs", metrics_ports=metrics, env=env
    )
    yield {
        "ports": ports,
        "metrics": metrics,
        "store": store,
        "logs": root / "logs",
        "processes": processes,
        "env": env,
        "root": root,
    }
    stop_services(processes, timeout=30)
