"""``montessori serve <service>``: run one service in the foreground until SIGTERM."""

from __future__ import annotations

import argparse

from common.envs import DEFAULT_PORTS, service_address

SERVICES = ("teacher", "influence", "preference", "trainer", "controller")


def add_parser(commands) -> None:
    sub = commands.add_parser(
        "serve", help="Run one gRPC service (teacher, influence, preference, trainer, controller)."
    )
    sub.add_argument("service", choices=SERVICES)
    sub.add_argument("--host", default="127.0.0.1", help="listen address (0.0.0.0 in a container)")
    sub.add_argument("--port", type=int, help="gRPC port (default: the service's, see README)")
    sub.add_argument("--metrics-port", type=int, default=0, help="Prometheus /metrics port (0: off)")
    sub.add_argument("--artifacts", default="artifacts", help="artifact store shared by all services")
    sub.add_argument("--workers", type=int, default=1, help="jobs run at once (more are queued)")
    sub.add_argument("--queue-capacity", type=int, default=16, help="jobs that may wait before RESOURCE_EXHAUSTED")
    sub.add_argument("--max-message-bytes", type=int, default=4 << 20, help="largest gRPC message")
    sub.add_argument("--grace", type=float, default=30.0, help="seconds in-flight jobs get on SIGTERM")
    sub.add_argument(
        "--max-streams",
        type=int,
        default=16,
        help="streams (WatchJob/WatchLoop) open at once; more: RESOURCE_EXHAUSTED",
    )
    sub.add_argument("--preload", action="append", default=[], help="teacher: model folder to load before SERVING")
    sub.add_argument(
        "--dtype", default=None, help="teacher: weights dtype of the transformers backend (default float32)"
    )
    sub.add_argument(
        "--backend",
        choices=("transformers", "vllm"),
        default=None,
        help="teacher: generation backend (vllm needs the vLLM environment, see README)",
    )
    sub.add_argument(
        "--teacher-config",
        default=None,
        help="teacher: YAML file of TeacherServiceConfig (backend, dtype, vllm: {...}); flags override it",
    )
    for worker in ("teacher", "influence", "preference", "trainer"):
        sub.add_argument(
            f"--{worker}",
            default=None,
            help=f"controller: {worker} service address (default {service_address(worker)})",
        )
    sub.add_argument(
        "--leader-election",
        action="store_true",
        help="controller: run loops only while holding a coordination.k8s.io Lease (for 2+ replicas)",
    )
    sub.add_argument("--lease-name", default="montessori-controller", help="controller: Lease name")
    sub.add_argument("--lease-namespace", default=None, help="controller: Lease namespace (default $POD_NAMESPACE)")
    sub.add_argument("--identity", default=None, help="controller: this replica's identity (default $POD_NAME)")
    sub.add_argument("--lease-seconds", type=float, default=15.0, help="controller: lease duration")
    sub.add_argument(
        "--renew-deadline", type=float, default=10.0, help="controller: step down after this long without renewing"
    )
    sub.add_argument("--retry-period", type=float, default=2.0, help="controller: seconds between lease rounds")
    sub.add_argument("--kube-api", default=None, help="controller: API server URL (default: in-cluster config)")


def run(args: argparse.Namespace) -> int:
    from common.config import from_dict
    from common.grpc_server import ServerConfig
    from common.service_main import serve_forever

    config = from_dict(
        ServerConfig,
        {
            "host": args.host,
            "port": DEFAULT_PORTS[args.service] if args.port is None else args.port,
            "metrics_port": args.metrics_port,
            "artifacts": args.artifacts,
            "workers": args.workers,
            "queue_capacity": args.queue_capacity,
            "max_message_bytes": args.max_message_bytes,
            "grace_seconds": args.grace,
            "max_streams": args.max_streams,
        },
    )
    if args.service == "teacher":
        from services.teacher.servicer import build as teacher_build

        teacher_config = _teacher_config(args)
        build = lambda store, jobs, ready: teacher_build(
            store, jobs, ready, preload=args.preload, config=teacher_config
        )  # noqa: E731
    elif args.service == "controller":
        from services.controller.remote import WorkerAddresses
        from services.controller.servicer import build as controller_build

        workers = WorkerAddresses(
            **{w: getattr(args, w) or service_address(w) for w in ("teacher", "influence", "preference", "trainer")}
        )
        election = None
        if args.leader_election:
            import os
            import socket

            from services.controller.leader import LeaseSettings

            election = LeaseSettings(
                namespace=args.lease_namespace or os.environ.get("POD_NAMESPACE", "montessori"),
                name=args.lease_name,
                identity=args.identity or os.environ.get("POD_NAME") or f"{socket.gethostname()}-{os.getpid()}",
                lease_seconds=args.lease_seconds,
                renew_deadline_seconds=args.renew_deadline,
                retry_seconds=args.retry_period,
            )
        build = lambda store, jobs, ready: controller_build(
            store,
            jobs,
            ready,
            workers=workers,
            election=election,  # noqa: E731
            kube_api=args.kube_api,
        )
    else:
        import importlib

        build = importlib.import_module(f"services.{args.service}.servicer").build
    serve_forever(args.service, config, build)
    return 0


def _teacher_config(args: argparse.Namespace):
    """TeacherServiceConfig from ``--teacher-config`` and the flags (validated: errors name the field)."""
    from common.config import from_dict
    from services.teacher.config import TeacherServiceConfig

    values: dict = {}
    if args.teacher_config:
        import yaml

        from common.errors import InvalidArgument

        try:
            with open(args.teacher_config) as handle:
                values = yaml.safe_load(handle) or {}
        except (OSError, yaml.YAMLError) as err:
            raise InvalidArgument(f"cannot read {args.teacher_config}: {err}", field="--teacher-config") from None
    for key in ("backend", "dtype"):
        if getattr(args, key) is not None:
            values[key] = getattr(args, key)
    return from_dict(TeacherServiceConfig, values, path="teacher-config")
