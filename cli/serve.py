"""``montessori serve <service>``: run one service in the foreground until SIGTERM."""
from __future__ import annotations

import argparse

from common.envs import DEFAULT_PORTS, service_address

SERVICES = ("teacher", "influence", "preference", "trainer", "controller")


def add_parser(commands) -> None:
    sub = commands.add_parser("serve", help="Run one gRPC service (teacher, influence, preference, trainer, controller).")
    sub.add_argument("service", choices=SERVICES)
    sub.add_argument("--host", default="127.0.0.1", help="listen address (0.0.0.0 in a container)")
    sub.add_argument("--port", type=int, help="gRPC port (default: the service's, see README)")
    sub.add_argument("--metrics-port", type=int, default=0, help="Prometheus /metrics port (0: off)")
    sub.add_argument("--artifacts", default="artifacts", help="artifact store shared by all services")
    sub.add_argument("--workers", type=int, default=1, help="jobs run at once (more are queued)")
    sub.add_argument("--queue-capacity", type=int, default=16, help="jobs that may wait before RESOURCE_EXHAUSTED")
    sub.add_argument("--max-message-bytes", type=int, default=4 << 20, help="largest gRPC message")
    sub.add_argument("--grace", type=float, default=30.0, help="seconds in-flight jobs get on SIGTERM")
    sub.add_argument("--preload", action="append", default=[], help="teacher: model folder to load before SERVING")
    sub.add_argument("--dtype", default="float32", help="teacher: weights dtype")
    for worker in ("teacher", "influence", "preference", "trainer"):
        sub.add_argument(f"--{worker}", default=None, help=f"controller: {worker} service address (default {service_address(worker)})")


def run(args: argparse.Namespace) -> int:
    from common.config import from_dict
    from common.grpc_server import ServerConfig
    from common.service_main import serve_forever

    config = from_dict(ServerConfig, {
        "host": args.host, "port": DEFAULT_PORTS[args.service] if args.port is None else args.port,
        "metrics_port": args.metrics_port, "artifacts": args.artifacts, "workers": args.workers,
        "queue_capacity": args.queue_capacity, "max_message_bytes": args.max_message_bytes, "grace_seconds": args.grace})
    if args.service == "teacher":
        from services.teacher.servicer import build as teacher_build

        build = lambda store, jobs, ready: teacher_build(store, jobs, ready, preload=args.preload, dtype=args.dtype)  # noqa: E731
    elif args.service == "controller":
        from services.controller.remote import WorkerAddresses
        from services.controller.servicer import build as controller_build

        workers = WorkerAddresses(**{w: getattr(args, w) or service_address(w) for w in ("teacher", "influence", "preference", "trainer")})
        build = lambda store, jobs, ready: controller_build(store, jobs, ready, workers=workers)  # noqa: E731
    else:
        import importlib

        build = importlib.import_module(f"services.{args.service}.servicer").build
    serve_forever(args.service, config, build)
    return 0
