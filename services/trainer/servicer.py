"""TrainerService: the gRPC layer over ``services.trainer.tasks``."""
from __future__ import annotations

import threading

from common.artifacts import ArtifactStore
from common.config import from_dict
from common.job_rpcs import JobRpcs
from common.jobs import JobManager
from common.protoconv import count, fingerprint, job_to_proto, local_artifact, model_from_proto, output_prefix, settings_to_dict
from common.service_main import ServiceParts
from montessori.v1 import trainer_pb2, trainer_pb2_grpc
from services.trainer import tasks
from services.trainer.config import DPOSettings, SFTSettings


class TrainerServicer(JobRpcs, trainer_pb2_grpc.TrainerServiceServicer):
    def TrainStudent(self, request, context):
        self.require_ready()
        student = model_from_proto(request.student, self.store, field="student")
        candidates = local_artifact(self.store, request.candidates_uri, field="candidates_uri")
        prefix = output_prefix(request.output_prefix)
        settings = from_dict(SFTSettings, settings_to_dict(request.sft), path="sft")
        limit = count(request.limit, field="limit", maximum=100_000_000)

        def work(progress):
            return tasks.train_student(self.store, prefix, student=student, candidates_path=candidates, settings=settings,
                                       seed=request.seed, save_optimizer=request.save_optimizer, limit=limit or None,
                                       progress=progress)

        job = self.jobs.submit(request.request_id, "train-student", work, fingerprint=fingerprint(request))
        return trainer_pb2.TrainStudentResponse(job=job_to_proto(job))

    def TrainTeacher(self, request, context):
        self.require_ready()
        teacher = model_from_proto(request.teacher, self.store, field="teacher")
        pairs = local_artifact(self.store, request.pairs_uri, field="pairs_uri")
        prefix = output_prefix(request.output_prefix)
        settings = from_dict(DPOSettings, settings_to_dict(request.dpo), path="dpo")

        def work(progress):
            return tasks.train_teacher(self.store, prefix, teacher=teacher, pairs_path=pairs, settings=settings,
                                       seed=request.seed, progress=progress)

        job = self.jobs.submit(request.request_id, "train-teacher", work, fingerprint=fingerprint(request))
        return trainer_pb2.TrainTeacherResponse(job=job_to_proto(job))


def build(store: ArtifactStore, jobs: JobManager, ready: threading.Event) -> ServiceParts:
    servicer = TrainerServicer(store, jobs, ready)
    return ServiceParts(register=lambda server: trainer_pb2_grpc.add_TrainerServiceServicer_to_server(servicer, server),
                        full_name=trainer_pb2.DESCRIPTOR.services_by_name["TrainerService"].full_name)
