"""Issue 22, findings 5, 6 and 8, on an in-process controller (its real servicer, server and interceptors) whose
loop is a scripted runner held at a gate, and a fake Kubernetes API for TokenReviews (tests/integration/lease_api.py):

* every kind of stream is bounded, and health Watch (no token) has a budget of its own;
* a TLS folder replaced in place is served by the next handshake, without a restart;
* TokenReview asks for the controller's audience, within a timeout, and an open stream ends once its token's
  review no longer passes.

Each test failed before its fix."""

from __future__ import annotations

import collections
import os
import shutil
import socket
import ssl
import threading
import time

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from common.artifacts import LocalArtifactStore
from common.auth import AccessList, BearerAuth, TokenReviewer
from common.grpc_server import ServerConfig, ServiceServer
from common.transport import ClientTransport, generate_local_pki
from montessori.v1 import controller_pb2, controller_pb2_grpc
from services.controller import loops as loops_module
from services.controller.leader import authentication_api
from services.controller.loops import LoopManager
from services.controller.servicer import ControllerServicer
from tests.integration.lease_api import API_AUDIENCE, LeaseAPI
from tests.stream_limits import open_health_watches

AUDIENCE = "montessori-controller"
SERVICE = controller_pb2.DESCRIPTOR.services_by_name["ControllerService"].full_name
OWN = [("grpc.use_local_subchannel_pool", 1)]  # a connection per channel (about 100 streams each)


class HeldRunner:
    """A loop that reports one stage started, then waits at ``gate`` (set when the test ends)."""

    gate = threading.Event()

    def __init__(self, config, *, store, executor, loop_id, state_extra, interrupted, on_event, should_stop):
        self.prefix, self.on_event, self.should_stop = f"loops/{loop_id}", on_event, should_stop

    def prepare(self) -> None:
        pass

    def run(self) -> dict:
        self.on_event("stage_started", 1, "scores", metrics={})
        while not self.gate.wait(0.2) and not self.should_stop():
            pass
        return {"stopped": True, "summary_uri": "", "summary_sha256": ""}


@pytest.fixture()
def api():
    api = LeaseAPI()
    yield api
    api.close()


@pytest.fixture()
def controller(tmp_path, monkeypatch, api):
    """An in-process controller on loopback with one running loop ``L``; TokenReview against the fake API
    (timeout 1 s, reviews reused for 1 s); ``reader-token`` is made for the controller's audience."""
    gate = threading.Event()
    monkeypatch.setattr(loops_module, "LoopRunner", type("Runner", (HeldRunner,), {"gate": gate}))
    loops = LoopManager(LocalArtifactStore(tmp_path / "store"), lambda loop_id: None)
    loops.start(None, request_id="", fingerprint="", loop_id="L")
    servicer = ControllerServicer(None, loops)
    reviewer = TokenReviewer(
        authentication_api(api.url), AccessList(read=frozenset({"reader"})), timeout=1.0, cache_seconds=1.0
    )
    api.tokens["reader-token"] = ("reader", [])
    api.audiences["reader-token"] = [AUDIENCE]
    server = ServiceServer(
        "controller",
        [SERVICE],
        ServerConfig(),
        lambda s: controller_pb2_grpc.add_ControllerServiceServicer_to_server(servicer, s),
        authorize=BearerAuth(reviewer),
    ).start()
    server.mark_ready()
    yield f"127.0.0.1:{server.port}"
    gate.set()
    server.stop()
    loops.shutdown(5)


def bearer(token: str = "reader-token"):
    return (("authorization", f"Bearer {token}"),)


def test_idle_reflection_and_health_watch_streams_leave_watch_get_and_health_answering__fake_api(controller):
    """200 idle reflection streams used to hold every server thread (two-way streams were not bounded), and
    health Watch (no token) shared WatchLoop's slots."""
    release = threading.Event()

    def idle():  # a client that opens reflection and never asks anything
        release.wait()
        yield from ()

    reflection_channels = [grpc.insecure_channel(controller, options=OWN) for _ in range(4)]
    health_channels = [grpc.insecure_channel(controller, options=OWN) for _ in range(4)]
    probe = grpc.insecure_channel(controller, options=OWN)
    try:
        reflections = [
            reflection_pb2_grpc.ServerReflectionStub(reflection_channels[i % 4]).ServerReflectionInfo(
                idle(), metadata=bearer(), timeout=120
            )
            for i in range(200)
        ]
        ended = collections.Counter()
        lock = threading.Lock()

        def on_done(call):
            with lock:
                ended[call.code().name] += 1

        for call in reflections:
            call.add_done_callback(on_done)
        deadline = time.monotonic() + 60
        while sum(ended.values()) < 196 and time.monotonic() < deadline:
            time.sleep(0.1)
        time.sleep(0.5)
        assert ended == {"RESOURCE_EXHAUSTED": 196}  # 4 stay open, idle, each holding one thread

        outcomes, watches = open_health_watches(health_channels[:4], 200, timeout=120)
        assert outcomes == {"open": 16, "RESOURCE_EXHAUSTED": 184}

        stub = controller_pb2_grpc.ControllerServiceStub(probe)
        watch = stub.WatchLoop(controller_pb2.WatchLoopRequest(loop_id="L"), metadata=bearer(), timeout=10)
        assert next(watch).event.kind == controller_pb2.LOOP_EVENT_KIND_SNAPSHOT
        watch.cancel()
        loop = stub.GetLoop(controller_pb2.GetLoopRequest(loop_id="L"), metadata=bearer(), timeout=5).loop
        assert loop.loop_id == "L" and loop.state == controller_pb2.LOOP_STATE_RUNNING
        check = health_pb2_grpc.HealthStub(probe).Check(health_pb2.HealthCheckRequest(), timeout=5)
        assert check.status == health_pb2.HealthCheckResponse.SERVING
        # reflection itself still answers a caller once a slot is free
        for call in watches + reflections:
            call.cancel()
    finally:
        release.set()
        for channel in [*reflection_channels, *health_channels, probe]:
            channel.close()


def _reflection_answers(address: str) -> bool:
    with grpc.insecure_channel(address) as channel:
        request = reflection_pb2.ServerReflectionRequest(list_services="")
        responses = reflection_pb2_grpc.ServerReflectionStub(channel).ServerReflectionInfo(
            iter([request]), metadata=bearer(), timeout=5
        )
        return any(r.list_services_response.service for r in responses)


def test_an_api_server_token_is_refused_and_a_hanging_review_is_unavailable_in_time__fake_api(controller, api):
    """Reviews asked for no audience, so a token made for the API server (any pod's default token) was accepted
    and could be replayed here; and a review that hung held the caller (and a server thread) with it."""
    stub = controller_pb2_grpc.ControllerServiceStub(grpc.insecure_channel(controller))
    api.tokens["api-token"] = ("reader", [])
    api.audiences["api-token"] = [API_AUDIENCE]
    with pytest.raises(grpc.RpcError) as err:
        stub.GetLoop(controller_pb2.GetLoopRequest(loop_id="L"), metadata=bearer("api-token"), timeout=10)
    assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert stub.GetLoop(controller_pb2.GetLoopRequest(loop_id="L"), metadata=bearer(), timeout=10).loop.loop_id == "L"
    assert _reflection_answers(controller)

    api.review_delay = 20
    api.tokens["slow-token"] = ("reader", [])
    started = time.monotonic()
    with pytest.raises(grpc.RpcError) as err:
        stub.GetLoop(controller_pb2.GetLoopRequest(loop_id="L"), metadata=bearer("slow-token"), timeout=15)
    assert err.value.code() == grpc.StatusCode.UNAVAILABLE, err.value.details()
    assert time.monotonic() - started < 5  # the review's 1 s timeout, not the API server's 20 s
    api.review_delay = 0


def test_an_open_watch_loop_ends_when_its_token_is_revoked__fake_api(controller, api):
    """A WatchLoop opened with a valid token used to stay open for good after the token was revoked."""
    stub = controller_pb2_grpc.ControllerServiceStub(grpc.insecure_channel(controller))
    watch = stub.WatchLoop(controller_pb2.WatchLoopRequest(loop_id="L"), metadata=bearer(), timeout=30)
    assert next(watch).event.kind == controller_pb2.LOOP_EVENT_KIND_SNAPSHOT
    revoked = time.monotonic()
    with api.lock:
        del api.tokens["reader-token"]
    with pytest.raises(grpc.RpcError) as err:
        next(watch)
    assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED, err.value.details()
    # cache (1 s) + re-check period (1 s) + the watch's poll (1 s), with room for 2 busy cores
    assert time.monotonic() - revoked < 8


# ---------------------------------------------------------------- certificates renewed in place


def _served_serial(port: int) -> int:
    """The serial number of the certificate the server presents in a fresh TLS handshake."""
    from cryptography import x509

    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    context.set_alpn_protocols(["h2"])
    with socket.create_connection(("127.0.0.1", port), timeout=5) as raw, context.wrap_socket(raw) as tls:
        return x509.load_der_x509_certificate(tls.getpeercert(binary_form=True)).serial_number


def _install(source, target) -> None:
    """Replace ``target``'s files with ``source``'s the way a Secret volume is updated: each one atomically."""
    for name in ("ca.crt", "tls.crt", "tls.key"):
        shutil.copyfile(source / name, target / f".{name}.new")
        os.replace(target / f".{name}.new", target / name)


def test_a_certificate_replaced_in_place_is_used_by_the_next_handshake(tmp_path):
    """The TLS folder was read once at start: a certificate that cert-manager renewed in place was only used
    after a restart, and an expired one failed every handshake until then."""
    from common.transport import _check_key_pair

    old, new = (
        generate_local_pki(tmp_path / "old", ["controller"]),
        generate_local_pki(tmp_path / "new", ["controller"]),
    )
    served = tmp_path / "served"
    shutil.copytree(old / "controller", served)
    config = ServerConfig(tls_dir=str(served), insecure=False)
    server = ServiceServer("controller", [SERVICE], config, lambda s: None, authorize=lambda m, c: None).start()
    server.mark_ready()
    try:
        before = _served_serial(server.port)
        _install(new / "controller", served)
        _check_key_pair(served)
        after = _served_serial(server.port)
        assert after != before
        from cryptography import x509

        assert after == x509.load_pem_x509_certificate((new / "controller" / "tls.crt").read_bytes()).serial_number
        # A client that trusts only the new CA connects (it could not before the reload), on a new connection.
        with ClientTransport(tls_dir=str(new / "controller")).channel(f"localhost:{server.port}") as channel:
            check = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=10)
        assert check.status == health_pb2.HealthCheckResponse.SERVING
        # A half-written folder (a key that is not the certificate's) keeps the current certificate.
        shutil.copyfile(old / "controller" / "tls.key", served / "tls.key")
        assert _served_serial(server.port) == after
    finally:
        server.stop()
