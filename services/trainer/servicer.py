"""TrainerService: the gRPC layer over ``services.trainer.stages``."""

from __future__ import annotations

import threading

from common.artifacts import ArtifactStore
from common.device import resolve_device
from common.job_rpcs import JobRpcs
from common.jobs import JobManager
from common.service_main import ServiceParts
from montessori.v1 import trainer_pb2, trainer_pb2_grpc
from services.trainer.config import TrainerServiceConfig
from services.trainer.launch import Launcher


class TrainerServicer(JobRpcs, trainer_pb2_grpc.TrainerServiceServicer, service="trainer"):
    """TrainStudent and TrainTeacher (from the stage registry), trained in ``launcher``'s ranks or, without one,
    in this process on ``device``."""

    def __init__(
        self,
        store: ArtifactStore,
        jobs: JobManager,
        ready: threading.Event,
        launcher: Launcher | None,
        device: str = "auto",
    ):
        super().__init__(store, jobs, ready, {"launcher": launcher, "device": device})


def build(
    store: ArtifactStore, jobs: JobManager, ready: threading.Event, config: TrainerServiceConfig | None = None
) -> ServiceParts:
    """The trainer's gRPC parts; ``config.processes`` > 1 trains each stage in that many launched ranks.
    ``config.device`` is resolved here, at start-up: FAILED_PRECONDITION naming ``device`` when this machine
    lacks it."""
    config = config or TrainerServiceConfig()
    resolve_device(config.device, field="device")
    servicer = TrainerServicer(store, jobs, ready, Launcher.from_config(config), config.device)
    return ServiceParts(
        register=lambda server: trainer_pb2_grpc.add_TrainerServiceServicer_to_server(servicer, server),
        full_name=trainer_pb2.DESCRIPTOR.services_by_name["TrainerService"].full_name,
    )
