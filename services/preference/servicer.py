"""PreferenceService: the gRPC layer over ``services.preference.stages``."""

from __future__ import annotations

import threading

from common.artifacts import ArtifactStore
from common.job_rpcs import JobRpcs
from common.jobs import JobManager
from common.service_main import ServiceParts
from montessori.v1 import preference_pb2, preference_pb2_grpc


class PreferenceServicer(JobRpcs, preference_pb2_grpc.PreferenceServiceServicer, service="preference"):
    """Assemble (from the stage registry)."""


def build(store: ArtifactStore, jobs: JobManager, ready: threading.Event) -> ServiceParts:
    servicer = PreferenceServicer(store, jobs, ready)
    return ServiceParts(
        register=lambda server: preference_pb2_grpc.add_PreferenceServiceServicer_to_server(servicer, server),
        full_name=preference_pb2.DESCRIPTOR.services_by_name["PreferenceService"].full_name,
    )
