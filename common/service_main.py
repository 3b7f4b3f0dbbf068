"""Starting a worker or controller service: store, jobs, metrics, gRPC server, readiness."""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass

import grpc

from common.artifacts import ArtifactStore, open_store
from common.auth import Authorize
from common.envs import apply_offline_defaults
from common.grpc_server import ServerConfig, ServiceServer
from common.jobs import JobManager
from common.logs import configure_logging, get_logger
from common.metrics import ServiceMetrics

log = get_logger(__name__)


@dataclass
class ServiceParts:
    """What a service module contributes: how to register its servicer, its full proto name,
    and what to load before it reports SERVING."""

    register: Callable[[grpc.Server], None]
    full_name: str
    preload: Callable[[], None] = lambda: None
    on_drain: Callable[[], None] = lambda: None
    #: Called with the started server; a service that manages its own health (a controller
    #: replica that is SERVING only while it leads) sets ``manages_health``.
    on_server: Callable[[ServiceServer], None] | None = None
    manages_health: bool = False
    #: Called with the service's metrics before the preload (the controller feeds its loop gauges from it).
    on_metrics: Callable[[ServiceMetrics], None] | None = None
    #: The service checks its callers itself (the controller's bearer tokens; TLS client certificates
    #: optional). None: a worker, whose TLS server requires a client certificate from ``allowed_clients``.
    authorize: Authorize | None = None


@dataclass
class RunningService:
    server: ServiceServer
    jobs: JobManager
    store: ArtifactStore
    ready: threading.Event
    parts: ServiceParts

    @property
    def port(self) -> int:
        return self.server.port

    def drain(self) -> None:
        """Stop the service's work: its own hook (e.g. loops), then its jobs."""
        self.parts.on_drain()
        self.jobs.shutdown(grace=self.server.config.grace_seconds)

    def stop(self) -> None:
        self.server.stop(on_drain=self.drain)


#: build(store, jobs, ready) -> ServiceParts
Builder = Callable[[ArtifactStore, JobManager, threading.Event], ServiceParts]


def start_service(name: str, config: ServerConfig, build: Builder) -> RunningService:
    """Start serving (health NOT_SERVING), run the preload, then mark SERVING."""
    store = open_store(config.artifacts)
    metrics = ServiceMetrics(name)
    jobs = JobManager(service=name, workers=config.workers, capacity=config.queue_capacity, on_finish=metrics.observe)
    ready = threading.Event()
    parts = build(store, jobs, ready)
    if parts.on_metrics:
        parts.on_metrics(metrics)
    server = ServiceServer(name, [parts.full_name], config, parts.register, authorize=parts.authorize).start()
    if config.metrics_port:
        metrics.serve(config.metrics_port, config.host)
    running = RunningService(server, jobs, store, ready, parts)
    parts.preload()
    ready.set()
    if parts.on_server:
        parts.on_server(server)
    if not parts.manages_health:
        server.mark_ready()
    return running


def serve_forever(name: str, config: ServerConfig, build: Builder) -> None:
    """Process entry: logs, signals, serve until SIGTERM, then drain jobs and exit."""
    apply_offline_defaults()
    configure_logging()
    running = start_service(name, config, build)
    running.server.install_signal_handlers(on_drain=running.drain)
    running.server.wait()
