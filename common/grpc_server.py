"""The gRPC server every montessori service runs: one error interceptor, the stock health
and reflection services, a Prometheus endpoint, size limits and graceful SIGTERM."""

from __future__ import annotations

import signal
import threading
import uuid
from collections.abc import Callable
from concurrent import futures
from dataclasses import dataclass

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from common.auth import AuthInterceptor, Authorize, PeerAllowList
from common.config import check, field
from common.errors import MontessoriError, printable
from common.logs import get_logger
from common.request_fields import check_locations
from common.transport import server_credentials

#: Server threads kept free of streams: health checks and unary calls always find one.
UNARY_THREADS = 16
#: Trailing metadata key of the request field a MontessoriError names.
FIELD_METADATA = "montessori-field"
log = get_logger(__name__)

LIVENESS = "liveness"


@dataclass
class ServerConfig:
    """Transport settings shared by every service (flags of ``montessori serve``)."""

    host: str = field("127.0.0.1", help="Address to listen on (0.0.0.0 in a container).")
    port: int = field(0, help="gRPC port (0: any free port).")
    metrics_port: int = field(0, help="Prometheus /metrics port (0: disabled).")
    artifacts: str = field("artifacts", help="Artifact store shared with the other services.")
    workers: int = field(1, help="Jobs run at once; more are queued.")
    queue_capacity: int = field(16, help="Jobs that may wait; beyond this, submits get RESOURCE_EXHAUSTED.")
    max_message_bytes: int = field(4 * 1024 * 1024, help="Largest gRPC message accepted or sent.")
    grace_seconds: float = field(30.0, help="On SIGTERM: how long in-flight jobs get to stop cleanly.")
    max_streams: int = field(
        16,
        help="The service's own streams (WatchJob, WatchLoop) open at once; one more is RESOURCE_EXHAUSTED. Each "
        "stream holds a server thread; the server has one per stream of every kind plus 16 more, so health checks "
        "and unary calls always answer.",
    )
    health_streams: int = field(
        16,
        help="grpc.health.v1 Watch streams open at once (they need no token, so they have a budget of their own "
        "and cannot take the service's stream slots); one more is RESOURCE_EXHAUSTED.",
    )
    reflection_streams: int = field(
        4,
        help="Server-reflection streams (two-way) open at once; one more is RESOURCE_EXHAUSTED. A reflection "
        "stream holds its thread while the client stays idle.",
    )

    tls_dir: str = field(
        "",
        help="TLS folder (cert-manager Secret layout: ca.crt, tls.crt, tls.key). Workers require a client "
        "certificate signed by ca.crt; the controller takes TLS with client certificates optional.",
    )
    insecure: bool = field(
        True,
        help="Plaintext gRPC, development only. The in-process default (tests); `montessori serve` needs an "
        "explicit --tls-dir or --insecure. Ignored when tls_dir is set.",
    )
    allowed_clients: list[str] = field(
        default_factory=lambda: ["controller"],
        help="Workers: client-certificate identities (common name or DNS name) accepted; others get PERMISSION_DENIED.",
    )
    health_port: int = field(
        0, help="Separate PLAINTEXT port serving only grpc.health.v1 (kubelet probes cannot speak TLS); 0: off."
    )

    def __post_init__(self) -> None:
        check(bool(self.tls_dir) or self.insecure, "tls_dir", "is required (or insecure for plaintext)")
        check(bool(self.allowed_clients), "allowed_clients", "must name at least one client")
        check(0 <= self.health_port <= 65535, "health_port", "must be in 0..65535")
        check(0 <= self.port <= 65535, "port", "must be in 0..65535")
        check(0 <= self.metrics_port <= 65535, "metrics_port", "must be in 0..65535")
        check(1 <= self.workers <= 64, "workers", "must be in 1..64")
        check(0 <= self.queue_capacity <= 100_000, "queue_capacity", "must be in 0..100000")
        check(1024 <= self.max_message_bytes <= 1 << 30, "max_message_bytes", "must be in 1 KiB..1 GiB")
        check(0 <= self.grace_seconds <= 3600, "grace_seconds", "must be in 0..3600")
        check(1 <= self.max_streams <= 10_000, "max_streams", "must be in 1..10000")
        check(1 <= self.health_streams <= 10_000, "health_streams", "must be in 1..10000")
        check(1 <= self.reflection_streams <= 10_000, "reflection_streams", "must be in 1..10000")

    def stream_budgets(self) -> dict[str, int]:
        """Streams open at once per kind (see :func:`stream_kind`)."""
        return {"service": self.max_streams, "health": self.health_streams, "reflection": self.reflection_streams}


def _status(err: MontessoriError) -> grpc.StatusCode:
    return getattr(grpc.StatusCode, err.code, grpc.StatusCode.INTERNAL)


def stream_kind(method: str) -> str:
    """Which stream budget a streaming method draws on: ``health`` (grpc.health.v1 Watch, no token needed),
    ``reflection`` (server reflection, two-way) or ``service`` (the service's own, authenticated streams)."""
    if method.startswith("/grpc.health.v1.Health/"):
        return "health"
    if method.startswith("/grpc.reflection."):
        return "reflection"
    return "service"


class ErrorInterceptor(grpc.ServerInterceptor):
    """Maps domain errors to status codes; anything else is INTERNAL with an incident id, never a traceback.
    Every request's path- and URI-like fields are checked before its handler runs (``check_locations``).
    Every streaming method, of every kind (server-streaming, client-streaming, two-way), holds a slot of its
    kind's budget while it runs; past the budget it is RESOURCE_EXHAUSTED at once."""

    def __init__(self, service: str, *, max_streams: int = 16, budgets: dict[str, int] | None = None):
        self.service = service
        self.budgets = dict(budgets or {"service": max_streams, "health": max_streams, "reflection": max_streams})
        self._slots = {kind: threading.BoundedSemaphore(size) for kind, size in self.budgets.items()}

    def intercept_service(self, continuation, handler_call_details):
        handler = continuation(handler_call_details)
        if handler is None:
            return None
        method = handler_call_details.method
        kind = stream_kind(method)
        slots, budget = self._slots[kind], self.budgets[kind]

        def guard(context, call):
            try:
                return call()
            except MontessoriError as err:
                if err.field:  # so a client (the controller) can re-raise it naming the field in its own terms
                    context.set_trailing_metadata(((FIELD_METADATA, printable(err.field, limit=256, ascii_only=True)),))
                # ASCII: gRPC percent-encodes other bytes (x3), and 1024 emoji exceeded a client's 8 KiB of metadata.
                context.abort(_status(err), printable(str(err), ascii_only=True))
            except grpc.RpcError:
                raise
            except NotImplementedError:  # a method of a stock service (e.g. Health/List) this version lacks
                context.abort(
                    grpc.StatusCode.UNIMPLEMENTED, f"{method} is not implemented by the {self.service} service"
                )
            except Exception:  # noqa: BLE001 - the one place unexpected errors are turned into a status
                incident = uuid.uuid4().hex[:8]
                log.exception("unexpected error", extra={"service": self.service, "stage": method, "job_id": incident})
                context.abort(
                    grpc.StatusCode.INTERNAL, f"internal error (incident {incident}); see the {self.service} log"
                )

        def take_slot(context) -> None:
            # Each open stream holds a server thread until it ends: past its kind's budget, refuse at once.
            if not slots.acquire(blocking=False):
                context.abort(
                    grpc.StatusCode.RESOURCE_EXHAUSTED,
                    f"{budget} {kind} streams are open on the {self.service} service; retry later",
                )

        def streamed(inner):
            def stream(request_or_iterator, context):
                take_slot(context)
                try:
                    # A generator's errors surface while iterating, so guard the iteration too.
                    iterator = guard(context, lambda: iter(inner(request_or_iterator, context)))
                    while True:
                        item = guard(context, lambda: next(iterator, StopIteration))
                        if item is StopIteration:
                            return
                        yield item
                finally:
                    slots.release()

            return stream

        def collected(inner):
            def call(request_iterator, context):
                take_slot(context)
                try:
                    return guard(context, lambda: inner(request_iterator, context))
                finally:
                    slots.release()

            return call

        serializers = {
            "request_deserializer": handler.request_deserializer,
            "response_serializer": handler.response_serializer,
        }
        if handler.unary_unary:
            inner = handler.unary_unary
            return grpc.unary_unary_rpc_method_handler(
                lambda request, context: guard(context, lambda: inner(check_locations(request), context)), **serializers
            )
        if handler.unary_stream:
            inner_stream = handler.unary_stream
            return grpc.unary_stream_rpc_method_handler(
                streamed(lambda request, context: inner_stream(check_locations(request), context)), **serializers
            )
        if handler.stream_stream:
            return grpc.stream_stream_rpc_method_handler(streamed(handler.stream_stream), **serializers)
        if handler.stream_unary:
            return grpc.stream_unary_rpc_method_handler(collected(handler.stream_unary), **serializers)
        return handler


class ServiceServer:
    """A started gRPC server with health (NOT_SERVING until ``mark_ready``) and reflection."""

    def __init__(
        self,
        name: str,
        full_service_names: list[str],
        config: ServerConfig,
        register: Callable[[grpc.Server], None],
        *,
        authorize: Authorize | None = None,
    ):
        """``authorize``: the service checks its callers itself (the controller's bearer tokens; client
        certificates optional). Without it, a TLS server requires a client certificate whose identity is
        in ``config.allowed_clients`` (a worker)."""
        self.name = name
        self.config = config
        self.service_names = full_service_names
        options = [
            ("grpc.max_send_message_length", config.max_message_bytes),
            ("grpc.max_receive_message_length", config.max_message_bytes),
        ]
        mutual = authorize is None  # a worker: mutual TLS and the allow-list
        if config.tls_dir and authorize is None:
            authorize = PeerAllowList(config.allowed_clients)
        # Authorisation runs first, so a refused call never holds a stream slot.
        interceptors = [AuthInterceptor(authorize)] if authorize else []
        budgets = config.stream_budgets()
        self.server = grpc.server(
            futures.ThreadPoolExecutor(
                max_workers=sum(budgets.values()) + UNARY_THREADS, thread_name_prefix=f"{name}-rpc"
            ),
            interceptors=[*interceptors, ErrorInterceptor(name, budgets=budgets)],
            options=options,
        )
        self.health = health.HealthServicer(experimental_non_blocking=True)
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
        register(self.server)
        reflection.enable_server_reflection(
            [*full_service_names, health.SERVICE_NAME, reflection.SERVICE_NAME], self.server
        )
        address = f"{config.host}:{config.port}"
        if config.tls_dir:
            credentials = server_credentials(config.tls_dir, require_client_cert=mutual)
            self.port = self.server.add_secure_port(address, credentials)
        else:
            log.warning("serving PLAINTEXT gRPC (--insecure): development only", extra={"service": name})
            self.port = self.server.add_insecure_port(address)
        # The probe port: plaintext, health only (no servicer, no reflection), so it reveals nothing else.
        self.health_server = None
        self.health_port = 0
        if config.health_port:
            # Health Watch streams bounded here too (2), so the probes' Check always finds one of 4 more threads.
            probe_budgets = {"service": 1, "health": 2, "reflection": 1}
            self.health_server = grpc.server(
                futures.ThreadPoolExecutor(max_workers=2 + 4, thread_name_prefix=f"{name}-health"),
                interceptors=[ErrorInterceptor(name, budgets=probe_budgets)],
                options=options,
            )
            health_pb2_grpc.add_HealthServicer_to_server(self.health, self.health_server)
            self.health_port = self.health_server.add_insecure_port(f"{config.host}:{config.health_port}")
        self._set(health_pb2.HealthCheckResponse.NOT_SERVING)
        self.stopped = threading.Event()

    def _set(self, status) -> None:
        self.health.set("", status)
        for service in self.service_names:
            self.health.set(service, status)

    def start(self) -> ServiceServer:
        self.server.start()
        if self.health_server is not None:
            self.health_server.start()
        # "liveness": SERVING while the process serves gRPC, whatever its readiness (a loading
        # worker, a follower controller); Kubernetes liveness probes ask for it.
        self.health.set(LIVENESS, health_pb2.HealthCheckResponse.SERVING)
        log.info("listening", extra={"service": self.name, "metrics": {"port": self.port}})
        return self

    def mark_ready(self) -> None:
        self._set(health_pb2.HealthCheckResponse.SERVING)
        log.info("serving", extra={"service": self.name})

    def mark_not_ready(self) -> None:
        self._set(health_pb2.HealthCheckResponse.NOT_SERVING)
        log.info("not serving", extra={"service": self.name})

    def stop(self, on_drain: Callable[[], None] | None = None) -> None:
        """Health NOT_SERVING, stop accepting, let ``on_drain`` stop the jobs, then close."""
        if self.stopped.is_set():
            return
        self._set(health_pb2.HealthCheckResponse.NOT_SERVING)
        self.health.set(LIVENESS, health_pb2.HealthCheckResponse.NOT_SERVING)
        stopping = self.server.stop(self.config.grace_seconds)
        if on_drain:
            on_drain()
        stopping.wait(self.config.grace_seconds)
        if self.health_server is not None:
            self.health_server.stop(0)
        self.stopped.set()
        log.info("stopped", extra={"service": self.name})

    def install_signal_handlers(self, on_drain: Callable[[], None] | None = None) -> None:
        def handle(signum, frame):
            threading.Thread(target=self.stop, args=(on_drain,), daemon=True).start()

        signal.signal(signal.SIGTERM, handle)
        signal.signal(signal.SIGINT, handle)

    def wait(self) -> None:
        # In short waits: a signal that arrives while the main thread blocks in one endless wait (a process resumed
        # from SIGSTOP) was seen never to run its handler, so a SIGTERM went unanswered.
        while not self.stopped.wait(1.0):
            pass
