"""The controller's start-up: the worker addresses, the callers' authentication (bearer tokens or TokenReview)
and the leader election, from ``montessori serve controller``'s flags."""

from __future__ import annotations

import argparse

from common.envs import Env, service_address
from common.errors import InvalidArgument
from common.logs import get_logger
from common.service_main import Builder

log = get_logger(__name__)

WORKERS = ("teacher", "influence", "preference", "trainer")


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
