"""Leader election for controller replicas with a ``coordination.k8s.io/v1`` Lease (the
``kubernetes`` client). Only the leader runs loops; when it stops renewing, another replica
takes the lease over and resumes the loops from the store. Outside a cluster the controller
is the single leader and never talks to an API server.

The protocol is client-go's: the holder renews ``spec.renewTime`` every ``retry_seconds``;
a lease not renewed for ``lease_seconds`` is expired and may be taken over; every write
carries the read ``resourceVersion``, so of two replicas racing for a lease exactly one wins
(the other gets 409 Conflict). A leader that cannot renew for ``renew_deadline_seconds``
steps down by itself, before the lease expires for the others.
"""

from __future__ import annotations

import datetime as dt
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from common.logs import get_logger

log = get_logger(__name__)


@dataclass(frozen=True)
class LeaseSettings:
    namespace: str
    name: str
    identity: str
    lease_seconds: float = 15.0
    renew_deadline_seconds: float = 10.0
    retry_seconds: float = 2.0


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


class LeaderElector:
    """Runs the election loop in a thread and calls ``on_started`` / ``on_stopped`` on transitions."""

    def __init__(self, api, settings: LeaseSettings, *, on_started: Callable[[], None], on_stopped: Callable[[], None]):
        self.api = api  # kubernetes.client.CoordinationV1Api
        self.settings = settings
        self.on_started = on_started
        self.on_stopped = on_stopped
        self.leading = threading.Event()
        self._stop = threading.Event()
        self._last_renew = 0.0
        self._thread = threading.Thread(target=self._run, name="leader-election", daemon=True)

    def start(self) -> LeaderElector:
        self._thread.start()
        return self

    def stop(self, release: bool = True) -> None:
        self._stop.set()
        self._thread.join(timeout=self.settings.retry_seconds * 3)
        if release and self.leading.is_set():
            self._release()
            self._step_down("released")

    # -- one round ---------------------------------------------------------------------------

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self._tick()
            except Exception as err:  # noqa: BLE001 - an API hiccup must not kill the election thread
                log.warning("lease round failed", extra={"stage": "leader", "metrics": {"error": type(err).__name__}})
            if self.leading.is_set() and time.monotonic() - self._last_renew > self.settings.renew_deadline_seconds:
                self._step_down("could not renew the lease in time")
            self._stop.wait(self.settings.retry_seconds)

    def _tick(self) -> None:
        from kubernetes.client import V1Lease, V1LeaseSpec, V1ObjectMeta
        from kubernetes.client.exceptions import ApiException

        s = self.settings
        try:
            lease = self.api.read_namespaced_lease(s.name, s.namespace)
        except ApiException as err:
            if err.status != 404:
                raise
            body = V1Lease(
                metadata=V1ObjectMeta(name=s.name, namespace=s.namespace),
                spec=V1LeaseSpec(
                    holder_identity=s.identity,
                    lease_duration_seconds=int(s.lease_seconds),
                    acquire_time=_now(),
                    renew_time=_now(),
                    lease_transitions=0,
                ),
            )
            if self._write(lambda: self.api.create_namespaced_lease(s.namespace, body)):
                self._became_leader()
            return
        spec = lease.spec
        if spec.holder_identity == s.identity:
            spec.renew_time = _now()
            if self._write(lambda: self.api.replace_namespaced_lease(s.name, s.namespace, lease)):
                self._became_leader()
            return
        renewed = spec.renew_time or spec.acquire_time
        duration = spec.lease_duration_seconds or s.lease_seconds
        if self.leading.is_set():
            self._step_down(f"lease is held by {spec.holder_identity}")
        if renewed is not None and (_now() - renewed).total_seconds() < duration and spec.holder_identity:
            return  # somebody else leads
        spec.holder_identity = s.identity
        spec.acquire_time = spec.renew_time = _now()
        spec.lease_duration_seconds = int(s.lease_seconds)
        spec.lease_transitions = (spec.lease_transitions or 0) + 1
        if self._write(lambda: self.api.replace_namespaced_lease(s.name, s.namespace, lease)):
            log.info("took over an expired lease", extra={"stage": "leader", "metrics": {"identity": s.identity}})
            self._became_leader()

    def _write(self, call) -> bool:
        from kubernetes.client.exceptions import ApiException

        try:
            call()
        except ApiException as err:
            if err.status == 409:  # somebody else wrote first
                return False
            raise
        self._last_renew = time.monotonic()
        return True

    def _release(self) -> None:
        s = self.settings
        try:
            lease = self.api.read_namespaced_lease(s.name, s.namespace)
            if lease.spec.holder_identity == s.identity:
                lease.spec.holder_identity = ""
                lease.spec.renew_time = None
                self.api.replace_namespaced_lease(s.name, s.namespace, lease)
        except Exception:  # noqa: BLE001 - best effort on the way out; the lease expires anyway
            pass

    def _became_leader(self) -> None:
        if not self.leading.is_set():
            self.leading.set()
            log.info("started leading", extra={"stage": "leader", "metrics": {"identity": self.settings.identity}})
            self.on_started()

    def _step_down(self, reason: str) -> None:
        if self.leading.is_set():
            self.leading.clear()
            log.warning("stopped leading", extra={"stage": "leader", "metrics": {"reason": reason}})
            self.on_stopped()


#: The label the leading replica puts on its own pod; the ``controller`` Service selects it, so callers
#: reach the leader while every replica is Ready (rollouts finish, the PDB counts both, drains proceed).
LEADER_LABEL = "montessori.dev/controller-leader"


class PodLabel:
    """Puts :data:`LEADER_LABEL` on this replica's own pod, or takes it off (a JSON merge patch of the
    pod's labels, through ``kubernetes.client.CoreV1Api``). Failures are logged, not raised: the lease,
    not the label, decides who runs loops; a follower that still receives a call answers UNAVAILABLE."""

    def __init__(self, api, namespace: str, pod: str):
        self.api, self.namespace, self.pod = api, namespace, pod

    def set(self, leading: bool) -> bool:
        body = {"metadata": {"labels": {LEADER_LABEL: "true" if leading else None}}}
        try:
            self.api.patch_namespaced_pod(self.pod, self.namespace, body)
        except Exception as err:  # noqa: BLE001 - an API hiccup; the next transition (or start) writes it again
            log.warning(
                "cannot label the pod",
                extra={
                    "stage": "leader",
                    "metrics": {"pod": self.pod, "leading": leading, "error": type(err).__name__},
                },
            )
            return False
        log.info("pod label set", extra={"stage": "leader", "metrics": {"pod": self.pod, "leading": leading}})
        return True


def api_client(api_url: str | None):
    """The Kubernetes API client of the controller (Leases, TokenReviews): in-cluster config, or an
    explicit API URL (tests, out-of-cluster)."""
    from kubernetes import client, config

    configuration = client.Configuration()
    if api_url:
        configuration.host = api_url
    else:
        config.load_incluster_config(client_configuration=configuration)
    return client.ApiClient(configuration)


def coordination_api(api_url: str | None):
    """A CoordinationV1Api on ``api_client(api_url)``."""
    from kubernetes import client

    return client.CoordinationV1Api(api_client(api_url))


def core_api(api_url: str | None):
    """A CoreV1Api (the leader's own pod label) on ``api_client(api_url)``."""
    from kubernetes import client

    return client.CoreV1Api(api_client(api_url))


def authentication_api(api_url: str | None):
    """An AuthenticationV1Api (TokenReview) on ``api_client(api_url)``."""
    from kubernetes import client

    return client.AuthenticationV1Api(api_client(api_url))
