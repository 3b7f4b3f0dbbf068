"""The controller's start-up: the worker addresses, the callers' authentication (bearer tokens or TokenReview)
and the leader election, from ``montessori serve controller``'s flags."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

from common.envs import Env, service_address
from common.errors import InvalidArgument
from common.logs import get_logger

if TYPE_CHECKING:  # every `montessori` command builds the flags: this module imports no server at module level
    from common.service_main import Builder

log = get_logger(__name__)

WORKERS = ("teacher", "influence", "preference", "trainer")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """``montessori serve controller``'s own flags (cli/serve.py adds the shared ones): the workers' addresses,
    the leader election and the callers' authentication."""
    for worker in WORKERS:
        parser.add_argument(
            f"--{worker}", default=None, help=f"{worker} service address (default {service_address(worker)})"
        )
    parser.add_argument(
        "--leader-election",
        action="store_true",
        help="run loops only while holding a coordination.k8s.io Lease (for 2+ replicas)",
    )
    parser.add_argument(
        "--label-leader",
        action="store_true",
        help="with --leader-election: the leader labels its own pod (--identity, default $POD_NAME) "
        "montessori.dev/controller-leader=true; the controller Service selects that label",
    )
    parser.add_argument("--lease-name", default="montessori-controller", help="Lease name")
    parser.add_argument("--lease-namespace", default=None, help="Lease namespace (default $POD_NAMESPACE)")
    parser.add_argument("--identity", default=None, help="this replica's identity (default $POD_NAME)")
    parser.add_argument("--lease-seconds", type=float, default=15.0, help="lease duration")
    parser.add_argument("--renew-deadline", type=float, default=10.0, help="step down after this long without renewing")
    parser.add_argument("--retry-period", type=float, default=2.0, help="seconds between lease rounds")
    parser.add_argument("--kube-api", default=None, help="API server URL (default: in-cluster config)")
    parser.add_argument(
        "--token-file",
        default=None,
        help="CSV of `token,name,role` lines (role read or write) that callers present as "
        "`authorization: Bearer <token>`",
    )
    parser.add_argument(
        "--token-review",
        action="store_true",
        help="authenticate bearer tokens with the Kubernetes TokenReview API (with --access-file)",
    )
    parser.add_argument(
        "--token-audience",
        default=None,
        help="with --token-review: the audience a token must be made for (default montessori-controller: "
        "`kubectl create token NAME --audience montessori-controller`); API-server tokens are refused",
    )
    parser.add_argument(
        "--token-review-timeout",
        type=float,
        default=5.0,
        help="with --token-review: seconds one TokenReview may take (then UNAVAILABLE)",
    )
    parser.add_argument(
        "--token-review-cache",
        type=float,
        default=30.0,
        help="with --token-review: seconds a review is reused; an open stream ends within this long (plus 1 s) "
        "of its token being revoked or expiring",
    )
    parser.add_argument(
        "--access-file",
        default=None,
        help="with --token-review: YAML {write: [users or groups], read: [...]}; write implies read",
    )


def builder(args: argparse.Namespace, tls_dir: str) -> Builder:
    """How ``montessori serve controller`` builds the service (flags checked now: one line naming the flag)."""
    from common.transport import ClientTransport
    from services.controller.remote import WorkerAddresses
    from services.controller.servicer import build

    workers = WorkerAddresses(
        **{w: getattr(args, w) or service_address(w) for w in WORKERS},
        transport=ClientTransport(tls_dir=tls_dir, insecure=not tls_dir, client_cert=True),
    )
    authorize = controller_auth(args, tls_dir)
    election = lease_settings(args) if args.leader_election else None

    def build_controller(store, jobs, ready):
        parts = build(
            store, jobs, ready, workers=workers, election=election, kube_api=args.kube_api, label_pod=args.label_leader
        )
        if authorize is None:
            log.warning("controller runs OPEN: --insecure and no --token-file/--token-review (development only)")
        parts.authorize = authorize
        return parts

    return build_controller


def lease_settings(args: argparse.Namespace):
    """The leader election's Lease: its namespace and this replica's identity default to the pod's
    (POD_NAMESPACE, POD_NAME). Outside a cluster without ``--kube-api`` it fails at start, on one line, rather
    than in the election thread of a server that looks healthy."""
    import os
    import socket

    from services.controller.leader import LeaseSettings, api_client

    if not args.kube_api:
        try:
            api_client(None)
        except Exception as err:  # noqa: BLE001 - kubernetes' ConfigException outside a cluster
            raise InvalidArgument(
                f"needs a Kubernetes cluster (in-cluster service account) or --kube-api URL ({err})",
                field="--leader-election",
            ) from None
    env = Env.read()
    return LeaseSettings(
        namespace=args.lease_namespace or env.pod_namespace,
        name=args.lease_name,
        identity=args.identity or env.pod_name or f"{socket.gethostname()}-{os.getpid()}",
        lease_seconds=args.lease_seconds,
        renew_deadline_seconds=args.renew_deadline,
        retry_seconds=args.retry_period,
    )


def controller_auth(args: argparse.Namespace, tls_dir: str):
    """The controller's bearer-token check (``common.auth.BearerAuth``), or None: open, only with --insecure."""
    from common.auth import DEFAULT_AUDIENCE, AccessList, BearerAuth, StaticTokens, TokenReviewer

    if args.token_file and args.token_review:
        raise InvalidArgument("cannot be combined with --token-review", field="--token-file")
    if args.access_file and not args.token_review:
        raise InvalidArgument("needs --token-review", field="--access-file")
    if args.token_file:
        return BearerAuth(StaticTokens.from_file(args.token_file))
    if args.token_review:
        if not args.access_file:
            raise InvalidArgument("is required with --token-review", field="--access-file")
        from services.controller.leader import authentication_api

        access = AccessList.from_file(args.access_file)
        try:
            api = authentication_api(args.kube_api)
        except Exception as err:  # noqa: BLE001 - kubernetes' ConfigException outside a cluster
            raise InvalidArgument(
                f"needs an in-cluster service account or --kube-api ({err})", field="--token-review"
            ) from None
        audience = DEFAULT_AUDIENCE if args.token_audience is None else args.token_audience
        return BearerAuth(
            TokenReviewer(
                api, access, audience=audience, timeout=args.token_review_timeout, cache_seconds=args.token_review_cache
            )
        )
    if tls_dir:
        raise InvalidArgument(
            "is required with --tls-dir (or --token-review): callers authenticate", field="--token-file"
        )
    return None
