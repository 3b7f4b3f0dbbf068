"""TrainerService: the gRPC layer over ``services.trainer.stages``."""

from __future__ import annotations

import threading

from common.artifacts import ArtifactStore
from common.job_rpcs import JobRpcs
from common.jobs import JobManager
from common.service_main import ServiceParts
from montessori.v1 import trainer_pb2, trainer_pb2_grpc
from services.trainer import stages


class TrainerServicer(JobRpcs, trainer_pb2_grpc.TrainerServiceServicer):
    def TrainStudent(self, request, context):
        return trainer_pb2.TrainStudentResponse(job=self.submit(request, "train-student", stages.train_student))

    def TrainTeacher(self, request, context):
        return trainer_pb2.TrainTeacherResponse(job=self.submit(request, "train-teacher", stages.train_teacher))


def build(store: ArtifactStore, jobs: JobManager, ready: threading.Event) -> ServiceParts:
    servicer = TrainerServicer(store, jobs, ready)
    return ServiceParts(
        register=lambda server: trainer_pb2_grpc.add_TrainerServiceServicer_to_server(servicer, server),
        full_name=trainer_pb2.DESCRIPTOR.services_by_name["TrainerService"].full_name,
    )
