"""Two controller replicas elect a leader through a Lease, with the real ``kubernetes`` client code
paths against a minimal Lease API served by the test (no kube-apiserver can run here)."""

from __future__ import annotations

import json
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
READY = "liveness"  # SERVING on every started replica (Kubernetes readiness asks it); "" on the leader only
LABEL = "montessori.dev/controller-leader"
LEASE_SECONDS, RETRY_SECONDS = 4, 0.5


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
    ports = services["ports"]
    workers = {worker: f"127.0.0.1:{ports[worker]}" for worker in ("teacher", "influence", "preference", "trainer")}
    return _start(identity, api_url, log_dir, services["store"].root_uri, workers, services["env"])


def _start(identity: str, api_url: str, log_dir, store_uri: str, workers: dict, env: dict, *flags: str):
    port = free_ports(1)[0]
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
        store_uri,
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
        str(LEASE_SECONDS),
        "--renew-deadline",
        "3",
        "--retry-period",
        str(RETRY_SECONDS),
        *flags,
    ]
    for worker, address in workers.items():
        command += [f"--{worker}", address]
    # the child gets its own copy of the descriptor: closing ours once it is started is safe
    with open(log_dir / f"{identity}.log", "ab") as log:
        process = subprocess.Popen(
            command,
            cwd=REPO,
            env={**os.environ, **env},
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


def test_every_replica_is_ready_and_the_service_label_follows_the_lease__fake_api(lease_api, tmp_path):
    """Only the leader used to be Ready, so a rollout waited for a follower that never became Ready and the PDB
    allowed no disruption. Now every replica is Ready (readiness asks "liveness"), the leader alone is SERVING on
    "" and carries the label the controller Service selects; a replica that starts clears a label its pod kept from
    a killed container. Fail-over is measured: after a crash, the lease expiring (LEASE_SECONDS) plus a
    round; after a graceful stop (the lease released), about one round (RETRY_SECONDS)."""
    store = (tmp_path / "store").as_uri()
    unreachable = {worker: "127.0.0.1:9" for worker in ("teacher", "influence", "preference", "trainer")}

    def start(identity):
        return _start(identity, lease_api.url, tmp_path, store, unreachable, {}, "--label-leader")

    def leads(address, identity):
        return health_status(address) == "SERVING" and identity in lease_api.labelled(NS, LABEL)

    address_a, replica_a = start("replica-a")
    replica_b = None
    try:
        wait_for(lambda: leads(address_a, "replica-a"), 120, "replica a to lead and label its pod")
        address_b, replica_b = start("replica-b")
        wait_for(
            lambda: health_status(address_b, service=READY) == "SERVING", 120, "replica b to be Ready as a follower"
        )
        assert health_status(address_b) == "NOT_SERVING"
        assert lease_api.labelled(NS, LABEL) == ["replica-a"]

        killed = time.monotonic()
        os.killpg(replica_a.pid, signal.SIGKILL)
        wait_for(lambda: leads(address_b, "replica-b"), 60, "replica b to take over")
        crash_failover = time.monotonic() - killed
        assert lease_api.holder(NS, LEASE) == "replica-b"

        # The killed pod's container restarts: it takes off the label it kept, and follows.
        address_a, replica_a = start("replica-a")
        wait_for(lambda: health_status(address_a, service=READY) == "SERVING", 120, "replica a to be Ready again")
        assert lease_api.labelled(NS, LABEL) == ["replica-b"]
        assert health_status(address_a) == "NOT_SERVING"

        stopped = time.monotonic()
        replica_b.terminate()  # SIGTERM, as a rollout or a drain does: the leader releases the lease
        wait_for(lambda: leads(address_a, "replica-a"), 60, "replica a to take over after a graceful stop")
        graceful_failover = time.monotonic() - stopped
        replica_b.wait(timeout=30)
        assert lease_api.labelled(NS, LABEL) == ["replica-a"]
        print(
            f"fail-over: crash {crash_failover:.1f} s, graceful stop {graceful_failover:.1f} s "
            f"(lease {LEASE_SECONDS} s, retry {RETRY_SECONDS} s)"
        )
        if os.environ.get("MONTESSORI_FAILOVER_REPORT"):  # one JSON line per run, for docs/operations-cluster.md
            with open(os.environ["MONTESSORI_FAILOVER_REPORT"], "a") as report:
                figures = {"crash_s": round(crash_failover, 2), "graceful_stop_s": round(graceful_failover, 2)}
                report.write(json.dumps({**figures, "lease_s": LEASE_SECONDS, "retry_s": RETRY_SECONDS}) + "\n")
        assert crash_failover < LEASE_SECONDS + 6  # lease expiry + a round, with room for 2 busy cores
        assert graceful_failover < crash_failover  # a released lease is taken at once, not after expiry
    finally:
        for process in (replica_a, replica_b):
            if process is not None and process.poll() is None:
                os.killpg(process.pid, signal.SIGKILL)
