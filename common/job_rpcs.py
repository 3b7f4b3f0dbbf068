"""GetJob / CancelJob / WatchJob: the same three RPCs on every worker service."""
from __future__ import annotations

import threading

from common.artifacts import ArtifactStore
from common.errors import InvalidArgument, Unavailable
from common.jobs import JobManager
from common.protoconv import job_to_proto
from montessori.v1 import common_pb2


class JobRpcs:
    """Mixin for a worker's generated servicer: its store, its jobs, its readiness, and the job RPCs."""

    def __init__(self, store: ArtifactStore, jobs: JobManager, ready: threading.Event):
        self.store, self.jobs, self.ready = store, jobs, ready

    def require_ready(self) -> None:
        if not self.ready.is_set():
            raise Unavailable("the service is still loading models; retry when health is SERVING")

    def GetJob(self, request, context):
        return common_pb2.GetJobResponse(job=job_to_proto(self.jobs.get(_job_id(request))))

    def CancelJob(self, request, context):
        return common_pb2.CancelJobResponse(job=job_to_proto(self.jobs.cancel(_job_id(request))))

    def WatchJob(self, request, context):
        for snapshot in self.jobs.watch(_job_id(request), is_active=context.is_active):
            yield common_pb2.WatchJobResponse(job=job_to_proto(snapshot))


def _job_id(request) -> str:
    if not request.job_id:
        raise InvalidArgument("is required", field="job_id")
    return request.job_id
