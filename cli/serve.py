"""``montessori serve <service>``: run one service in the foreground until SIGTERM.

This command holds what every service shares (listen address, artifacts, jobs, gRPC limits, TLS) and only
dispatches: each service's own flags (``add_arguments``) and start-up (``builder``) live in
``services/<service>/main.py``.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from common.envs import DEFAULT_PORTS
from common.logs import get_logger

log = get_logger(__name__)

SERVICES = ("teacher", "influence", "preference", "trainer", "controller")
#: The services whose TLS server requires a client certificate (the controller's): ``--allowed-clients``.
WORKERS = ("teacher", "influence", "preference", "trainer")

_HELP = {
    "teacher": "Teacher: Generate (candidate sets) and the teacher versions it serves.",
    "influence": "Influence: Score, MergeScores and Evaluate.",
    "preference": "Preference: Assemble (DPO pairs from candidates and scores).",
    "trainer": "Trainer: TrainStudent (SFT) and TrainTeacher (DPO).",
    "controller": "Controller: runs loops (StartLoop, WatchLoop, ...) on the four workers.",
}


def add_parser(commands) -> None:
    sub = commands.add_parser(
        "serve",
        help="Run one gRPC service (teacher, influence, preference, trainer, controller).",
        description="Run one gRPC service in the foreground until SIGTERM. `montessori serve SERVICE --help`: "
        "its flags.",
    )
    services = sub.add_subparsers(dest="service", required=True, metavar="SERVICE", parser_class=ServiceParser)
    parsers = {}
    for name in SERVICES:
        parser = services.add_parser(name, help=_HELP[name], description=_HELP[name])
        # Light on import (no grpc server, metrics or ML library): every `montessori` command builds this parser.
        importlib.import_module(f"services.{name}.main").add_arguments(parser)
        if name in WORKERS:
            add_allowed_clients_argument(parser)
        add_shared_arguments(parser.add_argument_group("every service"))
        parsers[name] = parser
    owners: dict[str, list[str]] = {}
    for name, parser in parsers.items():
        for flag in parser._option_string_actions:
            owners.setdefault(flag, []).append(name)
    for name, parser in parsers.items():
        parser.service = name
        parser.owners = {flag: names for flag, names in owners.items() if name not in names}


def add_shared_arguments(parser: argparse.ArgumentParser | argparse._ArgumentGroup) -> None:
    """The flags every service takes: where it listens, its artifact store, its jobs, gRPC limits and TLS."""
    parser.add_argument("--host", default="127.0.0.1", help="listen address (0.0.0.0 in a container)")
    parser.add_argument("--port", type=int, help="gRPC port (default: the service's, see README)")
    parser.add_argument("--metrics-port", type=int, default=0, help="Prometheus /metrics port (0: off)")
    parser.add_argument("--artifacts", default="artifacts", help="artifact store shared by all services")
    parser.add_argument("--workers", type=int, default=1, help="jobs run at once (more are queued)")
    parser.add_argument("--queue-capacity", type=int, default=16, help="jobs that may wait before RESOURCE_EXHAUSTED")
    parser.add_argument("--max-message-bytes", type=int, default=4 << 20, help="largest gRPC message")
    parser.add_argument("--grace", type=float, default=30.0, help="seconds in-flight jobs get on SIGTERM")
    parser.add_argument(
        "--max-streams",
        type=int,
        default=16,
        help="streams (WatchJob/WatchLoop) open at once; more: RESOURCE_EXHAUSTED",
    )
    parser.add_argument(
        "--tls-dir",
        default=None,
        help="TLS folder with ca.crt, tls.crt, tls.key (a cert-manager Secret; default $MONTESSORI_TLS_DIR): "
        "workers require a client certificate signed by ca.crt, the controller uses it to reach them",
    )
    parser.add_argument("--insecure", action="store_true", help="plaintext gRPC, no authentication (development only)")
    parser.add_argument(
        "--health-port", type=int, default=0, help="separate plaintext port serving only grpc.health.v1 (0: off)"
    )


def add_allowed_clients_argument(parser: argparse.ArgumentParser) -> None:
    """A worker's ``--allowed-clients`` (the controller authenticates its callers by token instead)."""
    parser.add_argument(
        "--allowed-clients",
        action="append",
        default=None,
        metavar="NAME",
        help="client-certificate identity (common name or DNS name) accepted; repeatable (default: controller)",
    )


class ServiceParser(argparse.ArgumentParser):
    """The parser of one ``montessori serve <service>``: a flag of another service is one line naming it
    (``--token-file: is a flag of serve controller only, not of serve teacher``), exit code 2."""

    service = ""
    #: Each flag of another service: the services that take it.
    owners: dict[str, list[str]] = {}

    def parse_known_args(self, args=None, namespace=None):
        # Checked before parsing: argparse would take `serve teacher --teacher ADDRESS` (the controller's flag) for
        # an abbreviation of --teacher-config.
        from common.errors import InvalidArgument

        for word in args if args is not None else sys.argv[1:]:
            if word == "--":
                break
            flag = word.split("=", 1)[0]
            if flag in self.owners:
                raise InvalidArgument(
                    f"is a flag of serve {', '.join(self.owners[flag])} only, not of serve {self.service}", field=flag
                )
        return super().parse_known_args(args, namespace)


def run(args: argparse.Namespace) -> int:
    from common.config import from_dict
    from common.grpc_server import ServerConfig
    from common.service_main import serve_forever

    tls_dir = _tls_dir(args)
    config = from_dict(
        ServerConfig,
        {
            "tls_dir": tls_dir,
            "insecure": not tls_dir,
            "allowed_clients": getattr(args, "allowed_clients", None) or ["controller"],
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
    if getattr(args, "device", None) is not None:  # a service with --device (common.device.add_device_argument)
        from common.device import resolve_device

        # Before any model loads: a GPU asked for on a machine without one is one line naming the flag.
        resolve_device(args.device, field="--device")
    # Each service's start-up lives with the service (services/<name>/main.py); this command only dispatches.
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
