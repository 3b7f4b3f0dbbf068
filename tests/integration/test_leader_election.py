"""Two controller replicas elect a leader through a Lease, with the real ``kubernetes`` client code
paths against a minimal Lease API served by the test (no kube-apiserver can run here)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import grpc
import pytest

from common.health import health_status
from montessori.v1 import controller_pb2, controller_pb2_grpc
from tests.conftest import REPO
from tests.integration.conftest import free_ports
from tests.integration.lease_api import LeaseAPI
from tests.integration.test_services import tiny_spec

NS, LEASE = "montessori", "montessori-controller"


def wait_for(predicate, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.fixture()
def lease_api():
    api = LeaseAPI()
    yield api
    api.close()


def start_replica(services, identity: str, api_url: str, log_dir):
    port = free_ports(1)[0]
    ports = services["ports"]
    command = [
        sys.executable,
        "-m",
        "cli.main",
        "serve",
        "controller",
        "--insecure",
        "--port",
        str(port),
        "--artifacts",
        services["store"].root_uri,
        "--grace",
        "5",
        "--leader-election",
        "--kube-api",
        api_url,
        "--identity",
        identity,
        "--lease-namespace",
        NS,
        "--lease-seconds",
        "4",
        "--renew-deadline",
        "3",
        "--retry-period",
        "0.5",
    ]
    for worker in ("teacher", "influence", "preference", "trainer"):
        command += [f"--{worker}", f"127.0.0.1:{ports[worker]}"]
    # the child gets its own copy of the descriptor: closing ours once it is started is safe
    with open(log_dir / f"{identity}.log", "ab") as log:
        process = subprocess.Popen(
            command,
            cwd=REPO,
            env={**os.environ, **services["env"]},
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    return f"127.0.0.1:{port}", process


def test_one_leader_takeover_on_leader_loss_and_step_down_on_renewal_failure(
    services, tiny_models, lease_api, tmp_path
):
    address_a, replica_a = start_replica(services, "replica-a", lease_api.url, tmp_path)
    try:
        wait_for(lambda: health_status(address_a) == "SERVING", 120, "replica a to lead")
        assert lease_api.holder(NS, LEASE) == "replica-a"
        address_b, replica_b = start_replica(services, "replica-b", lease_api.url, tmp_path)
        try:
            wait_for(lambda: health_status(address_b) == "NOT_SERVING", 120, "replica b to start as a follower")
            time.sleep(2)
            assert health_status(address_b) == "NOT_SERVING" and lease_api.holder(NS, LEASE) == "replica-a"
            assert health_status(address_b, service="liveness") == "SERVING"  # alive, just not leading
            follower = controller_pb2_grpc.ControllerServiceStub(grpc.insecure_channel(address_b))
            with pytest.raises(grpc.RpcError) as err:
                follower.StartLoop(controller_pb2.StartLoopRequest(spec=tiny_spec(tiny_models)), timeout=30)
            assert err.value.code() == grpc.StatusCode.UNAVAILABLE and "not the leader" in err.value.details()

            # The leader starts a loop, then dies; the follower takes the lease over and finishes the loop.
            leader = controller_pb2_grpc.ControllerServiceStub(grpc.insecure_channel(address_a))
            spec = tiny_spec(tiny_models, name="elected", evaluation={"baseline": False, "shift_samples": 0})
            loop = leader.StartLoop(controller_pb2.StartLoopRequest(request_id="elected", spec=spec), timeout=60).loop
            for response in leader.WatchLoop(controller_pb2.WatchLoopRequest(loop_id=loop.loop_id), timeout=300):
                if response.event.kind == controller_pb2.LOOP_EVENT_KIND_STAGE_FINISHED:
                    break
            os.killpg(replica_a.pid, signal.SIGKILL)
            wait_for(lambda: lease_api.holder(NS, LEASE) == "replica-b", 60, "replica b to take the lease over")
            wait_for(lambda: health_status(address_b) == "SERVING", 60, "replica b to serve")
            final = [
                r.event for r in follower.WatchLoop(controller_pb2.WatchLoopRequest(loop_id=loop.loop_id), timeout=600)
            ][-1]
            assert final.loop.state == controller_pb2.LOOP_STATE_SUCCEEDED, final.loop.error_message

            # A leader that cannot renew steps down by itself; when renewals work again it leads again.
            lease_api.fail_writes_from.add("replica-b")
            wait_for(lambda: health_status(address_b) == "NOT_SERVING", 30, "replica b to step down")
            lease_api.fail_writes_from.clear()
            wait_for(lambda: health_status(address_b) == "SERVING", 30, "replica b to lead again")
        finally:
            replica_b.terminate()
            replica_b.wait(timeout=30)
    finally:
        if replica_a.poll() is None:
            replica_a.kill()
