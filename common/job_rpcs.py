"""The RPCs every worker service has the same way: one per stage it runs (from the stage registry,
``common/stages.py``), and GetJob / CancelJob / WatchJob."""

from __future__ import annotations

import threading
from collections.abc import Mapping
from typing import Any

from common.artifacts import ArtifactStore
from common.errors import InvalidArgument, Unavailable
from common.jobs import JobManager
from common.protoconv import fingerprint, job_to_proto
from common.publication import confine_to_loop, write_once
from common.request_fields import service_model_roots
from common.stages import Stage, stages_of
from montessori.v1 import common_pb2


class JobRpcs:
    """Mixin for a worker's generated servicer: its store, its jobs, its readiness, the job RPCs, and one RPC per
    stage the registry gives its ``service`` (``class XServicer(JobRpcs, x_pb2_grpc.XServicer, service="x")``)."""

    def __init_subclass__(cls, *, service: str | None = None, **kwargs):
        super().__init_subclass__(**kwargs)
        for stage in stages_of(service) if service else ():
            setattr(cls, stage.rpc, _stage_rpc(stage))

    def __init__(
        self,
        store: ArtifactStore,
        jobs: JobManager,
        ready: threading.Event,
        resources: Mapping[str, Any] | None = None,
    ):
        self.store, self.jobs, self.ready = store, jobs, ready
        #: What this worker's stage functions take beside the request (see ``Stage.resources``).
        self.resources = dict(resources or {})
        #: Node-local model folders a request may name (others: INVALID_ARGUMENT); models else come from the store.
        self.model_roots = service_model_roots()

    def require_ready(self) -> None:
        if not self.ready.is_set():
            raise Unavailable("the service is still loading models; retry when health is SERVING")

    def submit(self, request, stage: Stage) -> common_pb2.Job | None:
        """Validate a stage request with its stage function and submit its work as a job (idempotent on
        request_id); a ``validate_only`` request stops after validation and gets no job."""
        validate_only = getattr(request, "validate_only", False)
        if not validate_only:
            self.require_ready()
        work = stage.work(self.store, request, model_roots=self.model_roots, resources=self.resources)
        if work is None:
            return None
        confine_to_loop(request)
        work = write_once(self.store, request, work)
        return job_to_proto(self.jobs.submit(request.request_id, stage.kind, work, fingerprint=fingerprint(request)))

    def GetJob(self, request, context):
        return common_pb2.GetJobResponse(job=job_to_proto(self.jobs.get(_job_id(request))))

    def CancelJob(self, request, context):
        return common_pb2.CancelJobResponse(job=job_to_proto(self.jobs.cancel(_job_id(request))))

    def WatchJob(self, request, context):
        for snapshot in self.jobs.watch(_job_id(request), request.from_sequence, is_active=context.is_active):
            yield common_pb2.WatchJobResponse(job=job_to_proto(snapshot), sequence=snapshot.sequence)


def _stage_rpc(stage: Stage):
    """The handler of a stage's RPC: validate, submit, answer with the job."""

    def handler(self: JobRpcs, request, context):
        return stage.response(job=self.submit(request, stage))

    handler.__name__ = handler.__qualname__ = stage.rpc
    handler.__doc__ = f"{stage.request.DESCRIPTOR.name} -> a {stage.kind} job ({stage.function})."
    return handler


def _job_id(request) -> str:
    if not request.job_id:
        raise InvalidArgument("is required", field="job_id")
    return request.job_id
