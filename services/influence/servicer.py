"""InfluenceService: the gRPC layer over ``services.influence.stages``."""

from __future__ import annotations

import threading

import torch

from common.artifacts import ArtifactStore
from common.device import resolve_device
from common.job_rpcs import JobRpcs
from common.jobs import JobManager
from common.service_main import ServiceParts
from montessori.v1 import influence_pb2, influence_pb2_grpc


class InfluenceServicer(JobRpcs, influence_pb2_grpc.InfluenceServiceServicer, service="influence"):
    """Score, MergeScores and Evaluate (from the stage registry) on ``device``: where Evaluate runs, and Score
    when its request's ``influence.device`` is ``auto``."""

    def __init__(
        self, store: ArtifactStore, jobs: JobManager, ready: threading.Event, device: torch.device | None = None
    ):
        device = device if device is not None else resolve_device("auto")
        super().__init__(store, jobs, ready, {"device": device})
        self.device = device


def build(store: ArtifactStore, jobs: JobManager, ready: threading.Event, *, device: str = "auto") -> ServiceParts:
    """The influence service's gRPC parts; ``device`` (a device setting, ``--device``) is resolved at start-up:
    FAILED_PRECONDITION naming ``device`` when this machine lacks it."""
    servicer = InfluenceServicer(store, jobs, ready, resolve_device(device, field="device"))
    return ServiceParts(
        register=lambda server: influence_pb2_grpc.add_InfluenceServiceServicer_to_server(servicer, server),
        full_name=influence_pb2.DESCRIPTOR.services_by_name["InfluenceService"].full_name,
    )
