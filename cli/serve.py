"""``montessori serve <service>``: run one service in the foreground until SIGTERM."""

from __future__ import annotations

import argparse

from common.envs import DEFAULT_PORTS, service_address
from common.logs import get_logger

log = get_logger(__name__)

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
        "--device",
        default=None,
        help="teacher, influence (Evaluate), trainer: auto (default: the first CUDA device, else the CPU), cpu, "
        "cuda or cuda:N",
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
    sub.add_argument(
        "--processes",
        default="1",
        help="trainer: training processes of one stage (1: in the service process; N or auto, the visible CUDA "
        "devices: N ranks launched with accelerate)",
    )
    sub.add_argument(
        "--accelerate-config",
        default=None,
        help="trainer: accelerate config of the multi-process launch (configs/accelerate/), for --processes > 1",
    )
    sub.add_argument(
        "--restarts",
        type=int,
        default=1,
        help="trainer: relaunches of crashed ranks (--processes > 1), each from the last checkpoint (default 1)",
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
    sub.add_argument(
        "--label-leader",
        action="store_true",
        help="controller, with --leader-election: the leader labels its own pod (--identity, default $POD_NAME) "
        "montessori.dev/controller-leader=true; the controller Service selects that label",
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
    sub.add_argument(
        "--tls-dir",
        default=None,
        help="TLS folder with ca.crt, tls.crt, tls.key (a cert-manager Secret; default $MONTESSORI_TLS_DIR): "
        "workers require a client certificate signed by ca.crt, the controller uses it to reach them",
    )
    sub.add_argument("--insecure", action="store_true", help="plaintext gRPC, no authentication (development only)")
    sub.add_argument(
        "--allowed-clients",
        action="append",
        default=None,
        metavar="NAME",
        help="workers: client-certificate identity (common name or DNS name) accepted; repeatable "
        "(default: controller)",
    )
    sub.add_argument(
        "--health-port", type=int, default=0, help="separate plaintext port serving only grpc.health.v1 (0: off)"
    )
    sub.add_argument(
        "--token-file",
        default=None,
        help="controller: CSV of `token,name,role` lines (role read or write) that callers present as "
        "`authorization: Bearer <token>`",
    )
    sub.add_argument(
        "--token-review",
        action="store_true",
        help="controller: authenticate bearer tokens with the Kubernetes TokenReview API (with --access-file)",
    )
    sub.add_argument(
        "--token-audience",
        default=None,
        help="controller, with --token-review: the audience a token must be made for (default "
        "montessori-controller: `kubectl create token NAME --audience montessori-controller`); API-server "
        "tokens are refused",
    )
    sub.add_argument(
        "--token-review-timeout",
        type=float,
        default=5.0,
        help="controller, with --token-review: seconds one TokenReview may take (then UNAVAILABLE)",
    )
    sub.add_argument(
        "--token-review-cache",
        type=float,
        default=30.0,
        help="controller, with --token-review: seconds a review is reused; an open stream ends within this "
        "long (plus 1 s) of its token being revoked or expiring",
    )
    sub.add_argument(
        "--access-file",
        default=None,
        help="controller, with --token-review: YAML {write: [users or groups], read: [...]}; write implies read",
    )


def run(args: argparse.Namespace) -> int:
    from common.config import from_dict
    from common.grpc_server import ServerConfig
    from common.service_main import serve_forever

    tls_dir = _tls_dir(args)
    _check_role_flags(args)
    config = from_dict(
        ServerConfig,
        {
            "tls_dir": tls_dir,
            "insecure": not tls_dir,
            "allowed_clients": args.allowed_clients or ["controller"],
            "health_port": args.health_port,
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
    if args.device is not None and args.service in ("teacher", "influence", "trainer"):
        from common.device import resolve_device

        # Before any model loads: a GPU asked for on a machine without one is one line naming the flag.
        resolve_device(args.device, field="--device")
    # Each service's start-up lives with the service (services/<name>/main.py); this command only dispatches.
    import importlib

    build = importlib.import_module(f"services.{args.service}.main").builder(args, tls_dir)
    serve_forever(args.service, config, build)
    return 0


def _tls_dir(args: argparse.Namespace) -> str:
    """``--tls-dir`` (or $MONTESSORI_TLS_DIR), "" with ``--insecure``; one of them is required."""
    from common.envs import Env
    from common.errors import InvalidArgument

    if args.insecure and args.tls_dir:
        raise InvalidArgument("cannot be combined with --tls-dir", field="--insecure")
    if args.insecure:
        return ""
    tls_dir = args.tls_dir or Env.read().tls_dir
    if not tls_dir:
        raise InvalidArgument(
            "is required (a folder with ca.crt, tls.crt, tls.key; or $MONTESSORI_TLS_DIR); "
            "--insecure serves plaintext for development",
            field="--tls-dir",
        )
    return tls_dir


def _check_role_flags(args: argparse.Namespace) -> None:
    """Token flags are the controller's, ``--allowed-clients`` the workers': a misplaced one is an error."""
    from common.errors import InvalidArgument

    if args.service == "controller" and args.allowed_clients:
        raise InvalidArgument(
            "is for workers (the controller authenticates callers by token)", field="--allowed-clients"
        )
    for flag in ("token_file", "token_review", "access_file", "token_audience"):
        if args.service != "controller" and getattr(args, flag):
            raise InvalidArgument("is for the controller only", field="--" + flag.replace("_", "-"))
