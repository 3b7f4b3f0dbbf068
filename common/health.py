"""Client side of the standard gRPC health service."""

from __future__ import annotations

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from common.transport import PLAINTEXT, ClientTransport


def health_status(
    address: str, timeout: float = 1.0, service: str = "", *, transport: ClientTransport = PLAINTEXT
) -> str:
    """SERVING / NOT_SERVING / UNREACHABLE of the server at ``address`` (or of one health entry).
    Health needs no token; a worker's TLS port needs a client certificate (or use its plaintext health port)."""
    with transport.channel(address) as channel:
        try:
            response = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=service), timeout=timeout
            )
        except grpc.RpcError:
            return "UNREACHABLE"
    return health_pb2.HealthCheckResponse.ServingStatus.Name(response.status)
