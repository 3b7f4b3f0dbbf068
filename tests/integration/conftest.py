"""Fixtures that start real service processes on loopback."""
from __future__ import annotations

import socket

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


@pytest.fixture(scope="module")
def services(tiny_models, tmp_path_factory):
    """The five services as separate OS processes sharing one store; yields (ports, store_root, processes)."""
    root = tmp_path_factory.mktemp("services")
    ports = dict(zip(ORDER, free_ports(len(ORDER))))
    metrics = dict(zip(ORDER, free_ports(len(ORDER))))
    processes = start_services(artifacts=str(root / "store"), ports=ports, log_dir=root / "logs", metrics_ports=metrics,
                               env={"MONTESSORI_TORCH_THREADS": "1"})
    yield {"ports": ports, "metrics": metrics, "store": root / "store", "logs": root / "logs", "processes": processes}
    stop_services(processes, timeout=30)
