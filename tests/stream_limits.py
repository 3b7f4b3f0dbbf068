"""Floods of idle streams, for the tests of the servers' stream budgets."""

from __future__ import annotations

import collections

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc


def open_health_watches(
    channels: list[grpc.Channel], count: int, timeout: float
) -> tuple[collections.Counter, list[grpc.Call]]:
    """Open ``count`` Health/Watch streams spread over ``channels`` and wait for each one's first answer: how many
    stayed open and, for the refused ones, their status codes by name; and the calls (to cancel)."""
    calls = [
        health_pb2_grpc.HealthStub(channels[i % len(channels)]).Watch(health_pb2.HealthCheckRequest(), timeout=timeout)
        for i in range(count)
    ]
    outcomes = collections.Counter()
    for call in calls:
        try:
            next(call)
            outcomes["open"] += 1
        except grpc.RpcError as err:
            outcomes[err.code().name] += 1
    return outcomes, calls
