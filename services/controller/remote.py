"""The loop's stage requests as jobs on the worker services (the controller's executor).

Each request is submitted with a deterministic request id (so a retried submit returns the same
job), followed with WatchJob, its progress forwarded, and its result read from the manifest the
worker published in the shared store. The controller knows the workers only through these
messages (montessori.v1).
"""

from __future__ import annotations

import socket
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace

import grpc

from common import errors
from common.artifacts import ArtifactStore
from common.errors import Cancelled, Interrupted
from common.grpc_server import FIELD_METADATA
from common.health import health_status
from common.logs import get_logger
from common.manifests import StageResult
from common.progress import Progress, no_progress
from common.protoconv import fingerprint, ref_from_proto, ref_to_proto
from common.stages import stage_of
from common.transport import PLAINTEXT, ClientTransport
from montessori.v1 import (
    common_pb2,
    influence_pb2,
    influence_pb2_grpc,
    preference_pb2_grpc,
    teacher_pb2_grpc,
    trainer_pb2_grpc,
)

log = get_logger(__name__)

_ERRORS = {
    cls.code: cls
    for cls in (
        errors.InvalidArgument,
        errors.NotFound,
        errors.FailedPrecondition,
        errors.ResourceExhausted,
        errors.Unavailable,
    )
}


@dataclass(frozen=True)
class WorkerAddresses:
    """host:port of each worker service, and how to reach them (mutual TLS with the controller's
    certificate, or plaintext in development)."""

    teacher: str
    influence: str
    preference: str
    trainer: str
    transport: ClientTransport = PLAINTEXT


#: Each worker service's client stub (which RPC runs a stage request: the stage registry, common/stages.py).
_STUBS = {
    "teacher": teacher_pb2_grpc.TeacherServiceStub,
    "trainer": trainer_pb2_grpc.TrainerServiceStub,
    "influence": influence_pb2_grpc.InfluenceServiceStub,
    "preference": preference_pb2_grpc.PreferenceServiceStub,
}


class RemoteExecutor:
    """A StageExecutor whose stages run as jobs on the worker services."""

    def __init__(
        self,
        store: ArtifactStore,
        addresses: WorkerAddresses,
        *,
        request_prefix: str,
        max_message_bytes: int = 4 << 20,
        attempts: int = 5,
        submit_timeout: float = 600.0,
        check_timeout: float = 120.0,
    ):
        self.store = store
        self.request_prefix = request_prefix
        self.attempts = attempts
        self.submit_timeout = submit_timeout
        self.check_timeout = check_timeout
        self.addresses = addresses
        self._options = [
            ("grpc.max_send_message_length", max_message_bytes),
            ("grpc.max_receive_message_length", max_message_bytes),
        ]
        self._channels: dict[str, grpc.Channel] = {}
        self._connect()

    def _connect(self) -> None:
        """Channels to every worker with the client certificate as it is now."""
        first = lambda value: value.split(",")[0].removeprefix("dns:///")  # noqa: E731 - all but Score go to one replica
        self.close()
        transport = self.addresses.transport
        self._tls_version = transport.files_version()
        self._channels = {
            name: transport.channel(first(getattr(self.addresses, name)), self._options) for name in _STUBS
        }
        self._stubs = {name: stub(self._channels[name]) for name, stub in _STUBS.items()}

    def _stub(self, service: str):
        """The worker's stub; its channel is made again once the TLS files were renewed in place (a loop outlives
        its certificate: an old channel would reconnect with the expired one)."""
        if self.addresses.transport.files_version() != self._tls_version:
            log.info("TLS files changed: reconnecting to the workers with the new certificate")
            self._connect()
        return self._stubs[service]

    def close(self) -> None:
        for channel in self._channels.values():
            channel.close()

    def _request_id(self, prefix: str) -> str:
        return f"{self.request_prefix}:{prefix}"

    def run(self, request, progress: Progress = no_progress) -> StageResult:
        if isinstance(request, influence_pb2.ScoreRequest):
            replicas = influence_replicas(self.addresses.influence, self.addresses.transport)
            if len(replicas) > 1:
                return self._score_sharded(replicas, request, progress)
        stage = stage_of(request)
        stub = self._stub(stage.service)
        return self._result(self._run(stage.service, stub, getattr(stub, stage.rpc), self._with_id(request), progress))

    def check(self, request) -> None:
        """The request with ``validate_only``: the worker checks it and answers at once (no job)."""
        stage = stage_of(request)
        service, rpc = stage.service, stage.rpc
        message = type(request)()
        message.CopyFrom(request)
        message.validate_only = True
        try:
            _call(
                service,
                lambda: getattr(self._stub(service), rpc)(message, wait_for_ready=True, timeout=self.check_timeout),
            )
        except errors.Unavailable as err:  # named with its address: a resumed loop shows it while it waits
            address = getattr(self.addresses, service)
            reason = err.message.removeprefix(f"{service} service: ")
            if reason == "Deadline Exceeded":
                reason = f"no answer within {self.check_timeout:.0f} s"
            raise errors.Unavailable(f"{service} service at {address}: {reason}", field=err.field) from None

    def _with_id(self, request):
        """The request with its job id: the loop's, then the digest of the request itself. A retried submit gets the
        same id (the same job); an id cannot be taken beforehand by another request, as a predictable one
        (``<loop>:<output prefix>``) could, failing the loop with FAILED_PRECONDITION."""
        message = type(request)()
        message.CopyFrom(request)
        message.request_id = self._request_id(fingerprint(request)[:32])
        return message

    def _run(self, service: str, stub, submit, request, progress: Progress) -> common_pb2.Job:
        """Submit (waiting for the service to be ready), follow the job, and return its final state.

        A worker that dies or restarts mid-job (the stream breaks, the job is unknown to the new
        process, or it was cancelled by the worker's shutdown) gets the same request again, with
        backoff, ``attempts`` times: the request id makes that safe, and outputs are published atomically.
        """
        for attempt in range(1, self.attempts + 1):
            job = self._submit(service, submit, request)
            try:
                for event in stub.WatchJob(common_pb2.WatchJobRequest(job_id=job.job_id), wait_for_ready=True):
                    job = event.job
                    if job.state == common_pb2.JOB_STATE_RUNNING and job.progress.total:
                        progress(job.progress.stage, job.progress.done, job.progress.total, dict(job.progress.metrics))
            except Interrupted:  # this controller stops, the loop does not: its next controller re-sends the request
                raise
            except Cancelled:  # StopLoop: the work is abandoned
                self._cancel(service, stub, job.job_id)
                raise
            except grpc.RpcError as err:
                # UNKNOWN comes from the transport, not from a worker (it maps every error to a code): a
                # connection reset under the stream ("Stream removed").
                if err.code() not in (
                    grpc.StatusCode.UNAVAILABLE,
                    grpc.StatusCode.NOT_FOUND,
                    grpc.StatusCode.CANCELLED,
                    grpc.StatusCode.UNKNOWN,
                ):
                    raise errors.Unavailable(f"{service} service: {err.code().name}: {err.details()}") from None
                self._backoff(service, attempt, f"{err.code().name}: {err.details()}")
                continue
            if job.state == common_pb2.JOB_STATE_CANCELLED:  # not ours: the worker shut down under it
                self._backoff(service, attempt, f"job {job.job_id} was cancelled by the service")
                continue
            if job.state != common_pb2.JOB_STATE_SUCCEEDED:
                raise _ERRORS.get(job.error_code, errors.FailedPrecondition)(
                    f"{service} job {job.job_id} failed: {job.error_message}"
                )
            return job
        raise errors.Unavailable(
            f"{service} service: job for {request.request_id} did not complete after {self.attempts} attempts"
        )

    def _submit(self, service: str, submit, request) -> common_pb2.Job:
        """Submit until the worker takes the job. A worker that does not take work yet (it is loading its models,
        shutting down or restarting, or it died with the submit in flight) has lost no job: it is asked again with
        backoff for up to ``submit_timeout`` s, not a number of times, so a slow restart does not fail the loop."""
        deadline = time.monotonic() + self.submit_timeout
        refusals = 0
        while True:
            remaining = max(1.0, deadline - time.monotonic())
            try:
                return _call(service, lambda t=remaining: submit(request, wait_for_ready=True, timeout=t)).job
            except errors.Unavailable as err:
                refusals += 1
                if time.monotonic() >= deadline:
                    raise errors.Unavailable(
                        f"{service} service did not take the job within {self.submit_timeout:.0f} s: {err.message}"
                    ) from None
                self._backoff(service, refusals, err.message, wait=min(2.0**refusals, 30.0))

    def _cancel(self, service: str, stub, job_id: str) -> None:
        """Best effort: a worker that cannot be reached now has no use for the job's result either (the loop is
        stopped, and a stopped loop started again re-sends the request, which replaces a cancelled job)."""
        try:
            stub.CancelJob(common_pb2.CancelJobRequest(job_id=job_id), timeout=30)
        except grpc.RpcError as err:
            log.warning(
                "could not cancel the job of a stopped loop",
                extra={"job_id": job_id, "stage": service, "metrics": {"reason": f"{err.code().name}"}},
            )

    def _backoff(self, service: str, attempt: int, reason: str, wait: float | None = None) -> None:
        log.warning(
            "worker lost the job; resubmitting",
            extra={"stage": service, "metrics": {"attempt": attempt, "reason": reason}},
        )
        if wait is None and attempt < self.attempts:
            wait = min(2.0**attempt, 30.0)
        if wait:
            time.sleep(wait)

    def _result(self, job: common_pb2.Job) -> StageResult:
        manifest = self.store.get_json(self.store.key_of(job.manifest.uri))
        return StageResult(
            manifest["stage"],
            {role: ref_from_proto(ref) for role, ref in job.outputs.items()},
            manifest["metrics"],
            ref_from_proto(job.manifest),
        )

    def _score_sharded(
        self, replicas: list[str], request: influence_pb2.ScoreRequest, progress: Progress
    ) -> StageResult:
        """One contiguous shard of the candidates per ready replica, scored in parallel, then merged in candidate
        order by MergeScores. Each candidate's influence depends only on the student state and itself, so the
        merge equals a single-replica run."""
        count = len(replicas)
        done: dict[int, tuple[int, int]] = {}
        transport = _replica_transport(self.addresses.influence, self.addresses.transport)

        def run_shard(index: int) -> StageResult:
            shard = influence_pb2.ScoreRequest()
            shard.CopyFrom(request)
            shard.output_prefix = f"{request.output_prefix}/shards/{index}"
            shard.shard.index, shard.shard.count = index, count
            channel = transport.channel(replicas[index], self._options)
            stub = influence_pb2_grpc.InfluenceServiceStub(channel)

            def shard_progress(label, n, total, metrics=None):
                done[index] = (n, total)
                progress(label, sum(d for d, _ in done.values()), sum(t for _, t in done.values()), metrics)

            try:
                return self._result(
                    self._run(f"influence@{replicas[index]}", stub, stub.Score, self._with_id(shard), shard_progress)
                )
            finally:
                channel.close()

        with ThreadPoolExecutor(max_workers=count) as pool:
            shards = list(pool.map(run_shard, range(count)))
        merge = influence_pb2.MergeScoresRequest(
            candidates=request.candidates,
            output_prefix=request.output_prefix,
            influence=request.influence,
            shards=[ref_to_proto(s.manifest) for s in shards],
        )
        stub = self._stub("influence")
        return self._result(self._run("influence", stub, stub.MergeScores, self._with_id(merge), progress))


def _replica_transport(spec: str, transport: ClientTransport) -> ClientTransport:
    """Replicas of a ``dns:///name:port`` entry are dialled by IP: their certificates name the Service."""
    for entry in (e.strip() for e in spec.split(",")):
        if entry.startswith("dns:///"):
            return replace(transport, server_name=entry.removeprefix("dns:///").rpartition(":")[0])
    return transport


def influence_replicas(spec: str, transport: ClientTransport = PLAINTEXT) -> list[str]:
    """The influence replicas to shard over: comma-separated ``host:port`` entries; a ``dns:///name:port``
    entry (a headless Service) expands to every address the name resolves to, and only replicas whose
    health is SERVING are used (all of them if none answers yet)."""
    addresses: list[str] = []
    for entry in (e.strip() for e in spec.split(",") if e.strip()):
        if entry.startswith("dns:///"):
            host, _, port = entry.removeprefix("dns:///").rpartition(":")
            ips = sorted({info[4][0] for info in socket.getaddrinfo(host, int(port), type=socket.SOCK_STREAM)})
            addresses += [f"[{ip}]:{port}" if ":" in ip else f"{ip}:{port}" for ip in ips]
        else:
            addresses.append(entry)
    if len(addresses) <= 1:
        return addresses
    transport = _replica_transport(spec, transport)
    ready = [a for a in addresses if health_status(a, transport=transport) == "SERVING"]
    return ready or addresses


def _call(service: str, rpc):
    """A unary call whose failure becomes the matching domain error, naming the service and, where the worker
    named one, the request field (from the trailing metadata)."""
    try:
        return rpc()
    except grpc.RpcError as err:
        cls = _ERRORS.get(err.code().name, errors.Unavailable)
        field = dict(err.trailing_metadata() or ()).get(FIELD_METADATA)
        details = err.details() or ""
        if field:
            raise cls(details.removeprefix(f"{field}: "), field=field) from None
        raise cls(f"{service} service: {details}") from None
