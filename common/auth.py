"""Who may call a server: the controller's bearer tokens (a static token file, or Kubernetes
TokenReview with an access file) and the workers' client-certificate allow-list.

One server interceptor (``AuthInterceptor``) runs an ``authorize(method, context)`` check before
every handler except the health service (kubelet probes and load balancers carry no
credentials); the check aborts with UNAUTHENTICATED or PERMISSION_DENIED. Tokens never reach a
log line: only the caller's name does.
"""

from __future__ import annotations

import hashlib
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import grpc

from common.errors import InvalidArgument
from common.logs import get_logger

log = get_logger(__name__)

READ, WRITE = "read", "write"
HEALTH_PREFIX = "/grpc.health.v1.Health/"
REFLECTION_PREFIX = "/grpc.reflection."
#: Methods that only read (AIP-131/132 Get/List, and Watch streams); every other method of a
#: service needs the write role, so a mutating method added later is protected by default.
READ_VERBS = ("Get", "List", "Watch")

#: ``authorize(method, context)`` aborts the call, or lets it through and returns what re-checks the caller
#: while a stream stays open (a callable answering whether its credentials are still valid), or None.
Recheck = Callable[[], bool]
Authorize = Callable[[str, grpc.ServicerContext], "Recheck | None"]
#: Audience the controller asks TokenReview for: a token must have been made for it (``kubectl create token
#: --audience montessori-controller``); a token for the API server is refused, so it cannot be replayed here.
DEFAULT_AUDIENCE = "montessori-controller"
#: How often an open stream re-checks its caller (cheap: the review cache answers until it expires).
RECHECK_SECONDS = 1.0


@dataclass(frozen=True)
class Caller:
    """An authenticated caller: its name (token-file name or Kubernetes username) and role
    (``read``, ``write``, or None when it is known but granted nothing)."""

    name: str
    role: str | None


def _digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def is_read_method(method: str) -> bool:
    """``/pkg.Service/Method``: a Get/List/Watch method, or server reflection."""
    if method.startswith(REFLECTION_PREFIX):
        return True
    return method.rsplit("/", 1)[-1].startswith(READ_VERBS)


class StaticTokens:
    """Tokens from a CSV file of ``token,name,role`` lines (role ``read`` or ``write``; ``#`` comments).
    Held by digest, so the tokens themselves are not kept in memory longer than the read."""

    def __init__(self, callers: dict[str, Caller]):
        self._callers = callers

    @classmethod
    def from_file(cls, path: str | Path) -> StaticTokens:
        try:
            lines = Path(path).read_text().splitlines()
        except OSError as err:
            raise InvalidArgument(f"cannot read {path}: {err.strerror or err}", field="--token-file") from None
        callers: dict[str, Caller] = {}
        for number, line in enumerate(lines, 1):
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            where = f"{path}:{number}"
            parts = [p.strip() for p in line.split(",")]
            if len(parts) != 3 or not all(parts):
                raise InvalidArgument(f"{where}: expected token,name,role", field="--token-file")
            token, name, role = parts
            if role not in (READ, WRITE):
                raise InvalidArgument(f"{where}: role must be read or write, not {role!r}", field="--token-file")
            if _digest(token) in callers:
                raise InvalidArgument(f"{where}: token repeats an earlier line", field="--token-file")
            callers[_digest(token)] = Caller(name, role)
        if not callers:
            raise InvalidArgument(f"{path} holds no token", field="--token-file")
        return cls(callers)

    def authenticate(self, token: str) -> Caller | None:
        return self._callers.get(_digest(token))


@dataclass(frozen=True)
class AccessList:
    """Which Kubernetes users or groups may read or write (``--access-file``, YAML
    ``{write: [...], read: [...]}``); write implies read."""

    write: frozenset[str] = frozenset()
    read: frozenset[str] = frozenset()

    @classmethod
    def from_file(cls, path: str | Path) -> AccessList:
        import yaml

        try:
            data = yaml.safe_load(Path(path).read_text()) or {}
        except (OSError, yaml.YAMLError) as err:
            raise InvalidArgument(f"cannot read {path}: {err}", field="--access-file") from None
        if not isinstance(data, dict):
            raise InvalidArgument(f"{path}: expected a mapping {{write: [...], read: [...]}}", field="--access-file")
        unknown = sorted(set(data) - {READ, WRITE})
        if unknown:
            raise InvalidArgument(f"{path}: unknown key {unknown[0]!r} (expected write, read)", field="--access-file")
        lists = {}
        for key in (READ, WRITE):
            names = data.get(key) or []
            if not isinstance(names, list) or not all(isinstance(n, str) and n for n in names):
                raise InvalidArgument(f"{path}: {key} must be a list of user or group names", field="--access-file")
            lists[key] = frozenset(names)
        return cls(write=lists[WRITE], read=lists[READ])

    def role(self, names: Iterable[str]) -> str | None:
        names = set(names)
        if names & self.write:
            return WRITE
        if names & self.read:
            return READ
        return None


class TokenReviewer:
    """Tokens checked by the Kubernetes TokenReview API (a ServiceAccount token, or any token the
    API server authenticates), the user and groups mapped to a role by an ``AccessList``. Reviews
    are cached for ``cache_seconds`` (by token digest) so a stream of calls costs one API request;
    each review asks for ``audience`` (a token made for another audience, e.g. the API server's, is
    refused) and waits at most ``timeout`` seconds for the API server."""

    def __init__(
        self,
        api,
        access: AccessList,
        *,
        audience: str = DEFAULT_AUDIENCE,
        timeout: float = 5.0,
        cache_seconds: float = 30.0,
        clock=time.monotonic,
    ):
        self.api = api  # kubernetes.client.AuthenticationV1Api
        self.access = access
        self.audience = audience
        self.timeout = timeout
        self.cache_seconds = cache_seconds
        self._clock = clock
        self._cache: dict[str, tuple[float, Caller | None]] = {}
        self._lock = threading.Lock()

    def authenticate(self, token: str) -> Caller | None:
        key = _digest(token)
        now = self._clock()
        with self._lock:
            cached = self._cache.get(key)
            if cached and now - cached[0] < self.cache_seconds:
                return cached[1]
        caller = self._review(token)
        with self._lock:
            self._cache = {k: v for k, v in self._cache.items() if now - v[0] < self.cache_seconds}
            self._cache[key] = (now, caller)
        return caller

    def _review(self, token: str) -> Caller | None:
        from kubernetes.client import V1TokenReview, V1TokenReviewSpec

        spec = V1TokenReviewSpec(token=token, audiences=[self.audience] if self.audience else None)
        status = self.api.create_token_review(V1TokenReview(spec=spec), _request_timeout=self.timeout).status
        if status is None or not status.authenticated or status.user is None:
            return None
        # The API server answers with the requested audiences the token is valid for; an authenticator that
        # is not audience-aware answers none, and its tokens are the API server's own: refused.
        if self.audience and self.audience not in (status.audiences or []):
            return None
        user = status.user
        return Caller(user.username or "", self.access.role([user.username or "", *(user.groups or [])]))


class BearerAuth:
    """The controller's check: ``authorization: Bearer <token>`` names a caller whose role covers the
    method (write for anything but Get/List/Watch and reflection). A stream re-checks the token while
    it is open (the returned recheck): a token revoked or expired ends it once its review does."""

    def __init__(self, authenticator):
        self.authenticator = authenticator  # StaticTokens or TokenReviewer

    def __call__(self, method: str, context: grpc.ServicerContext) -> Recheck:
        header = dict(context.invocation_metadata()).get("authorization", "")
        scheme, _, token = header.partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            context.abort(grpc.StatusCode.UNAUTHENTICATED, "missing authorization: Bearer <token> metadata")
        try:
            caller = self.authenticator.authenticate(token)
        except Exception as err:  # noqa: BLE001 - an API server outage is UNAVAILABLE, never an open door
            log.warning("token review failed", extra={"stage": method, "metrics": {"error": type(err).__name__}})
            context.abort(grpc.StatusCode.UNAVAILABLE, "cannot check the token now; retry later")
        if caller is None:
            context.abort(grpc.StatusCode.UNAUTHENTICATED, "invalid or expired token")
        needed = READ if is_read_method(method) else WRITE
        if not _covers(caller.role, needed):
            log.info("permission denied", extra={"stage": method, "metrics": {"caller": caller.name}})
            context.abort(
                grpc.StatusCode.PERMISSION_DENIED,
                f"{caller.name or 'caller'} has no {needed} permission for {method}",
            )
        return lambda: self._still_valid(token, needed)

    def _still_valid(self, token: str, needed: str) -> bool:
        try:
            caller = self.authenticator.authenticate(token)
        except Exception:  # noqa: BLE001 - a review that cannot be done now does not keep a stream open
            return False
        return caller is not None and _covers(caller.role, needed)


def _covers(role: str | None, needed: str) -> bool:
    return role in (WRITE, needed)


class PeerAllowList:
    """A worker's check: the client certificate's identity (common name or a DNS name) is allowed."""

    def __init__(self, allowed: Iterable[str]):
        self.allowed = frozenset(allowed)

    def __call__(self, method: str, context: grpc.ServicerContext) -> None:
        from common.transport import peer_identities

        names = peer_identities(context)
        if not self.allowed.intersection(names):
            who = names[0] if names else "a client without a certificate"
            context.abort(grpc.StatusCode.PERMISSION_DENIED, f"{who} is not an allowed client of this service")


class _RecheckedContext:
    """A stream's context whose ``is_active`` also turns False once its caller's credentials no longer
    check (a servicer's stream loop polls it: WatchLoop every second), re-checked every ``RECHECK_SECONDS``."""

    def __init__(self, context: grpc.ServicerContext, recheck: Recheck):
        self._context, self._recheck = context, recheck
        self._next = time.monotonic() + RECHECK_SECONDS
        self.revoked = False

    def still_valid(self) -> bool:
        if not self.revoked and time.monotonic() >= self._next:
            self.revoked = not self._recheck()
            self._next = time.monotonic() + RECHECK_SECONDS
        return not self.revoked

    def is_active(self) -> bool:
        return self.still_valid() and self._context.is_active()

    def __getattr__(self, name):
        return getattr(self._context, name)


class AuthInterceptor(grpc.ServerInterceptor):
    """Runs ``authorize`` before every method except the health service; a response stream ends
    (UNAUTHENTICATED) when its caller's credentials stop checking while it is open."""

    def __init__(self, authorize: Authorize):
        self.authorize = authorize

    def intercept_service(self, continuation, handler_call_details):
        handler = continuation(handler_call_details)
        method = handler_call_details.method
        if handler is None or method.startswith(HEALTH_PREFIX):
            return handler
        authorize = self.authorize

        def checked(inner):
            def call(request_or_iterator, context):
                authorize(method, context)
                return inner(request_or_iterator, context)

            return call

        def checked_stream(inner):
            def stream(request_or_iterator, context):
                recheck = authorize(method, context)
                if recheck is None:
                    yield from inner(request_or_iterator, context)
                    return
                watched = _RecheckedContext(context, recheck)
                for item in inner(request_or_iterator, watched):
                    if not watched.still_valid():
                        break
                    yield item
                if watched.revoked:
                    context.abort(grpc.StatusCode.UNAUTHENTICATED, "the token is no longer valid; the stream ended")

            return stream

        kinds = {
            "unary_unary": (grpc.unary_unary_rpc_method_handler, checked),
            "unary_stream": (grpc.unary_stream_rpc_method_handler, checked_stream),
            "stream_unary": (grpc.stream_unary_rpc_method_handler, checked),
            "stream_stream": (grpc.stream_stream_rpc_method_handler, checked_stream),
        }
        for kind, (make, wrap) in kinds.items():
            inner = getattr(handler, kind)
            if inner:
                return make(
                    wrap(inner),
                    request_deserializer=handler.request_deserializer,
                    response_serializer=handler.response_serializer,
                )
        return handler
