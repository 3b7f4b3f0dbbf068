"""TeacherService: the gRPC layer over ``services.teacher.tasks`` (translate, submit, translate)."""
from __future__ import annotations

import threading

from common.artifacts import ArtifactStore
from common.config import from_dict
from common.errors import InvalidArgument
from common.job_rpcs import JobRpcs
from common.jobs import JobManager
from common.models import ModelRef
from common.protoconv import count, fingerprint, job_to_proto, local_artifact, model_from_proto, output_prefix, settings_to_dict
from common.service_main import ServiceParts
from montessori.v1 import teacher_pb2, teacher_pb2_grpc
from services.teacher import tasks
from services.teacher.backend import BackendCache
from services.teacher.config import SynthesisConfig

MAX_PROMPTS = 1_000_000


class TeacherServicer(JobRpcs, teacher_pb2_grpc.TeacherServiceServicer):
    def __init__(self, store: ArtifactStore, jobs: JobManager, ready: threading.Event, backends: BackendCache):
        super().__init__(store, jobs, ready)
        self.backends = backends

    def Generate(self, request, context):
        self.require_ready()
        teacher = model_from_proto(request.teacher, self.store, field="teacher")
        seed_path = local_artifact(self.store, request.seed_set_uri, field="seed_set_uri")
        prefix = output_prefix(request.output_prefix)
        prompts = count(request.num_prompts, field="num_prompts", maximum=MAX_PROMPTS)
        target = count(request.target_examples, field="target_examples", maximum=MAX_PROMPTS)
        if bool(prompts) == bool(target):
            raise InvalidArgument("set exactly one of num_prompts and target_examples (> 0)", field="num_prompts")
        config = from_dict(SynthesisConfig, settings_to_dict(request.synthesis), path="synthesis")
        label = request.teacher_label or f"teacher-r{len(teacher.adapters)}"

        def work(progress):
            return tasks.generate(self.store, prefix, backend=self.backends.get(teacher), teacher=teacher, teacher_label=label,
                                  seed_path=seed_path, config=config, seed=request.seed, num_prompts=prompts or None,
                                  target=target or None, progress=progress)

        job = self.jobs.submit(request.request_id, "generate", work, fingerprint=fingerprint(request))
        return teacher_pb2.GenerateResponse(job=job_to_proto(job))


def build(store: ArtifactStore, jobs: JobManager, ready: threading.Event, *, preload: list[str] | None = None,
          dtype: str = "float32") -> ServiceParts:
    backends = BackendCache(dtype)
    servicer = TeacherServicer(store, jobs, ready, backends)

    def load() -> None:
        for path in preload or []:
            backends.get(ModelRef(path))

    return ServiceParts(register=lambda server: teacher_pb2_grpc.add_TeacherServiceServicer_to_server(servicer, server),
                        full_name=teacher_pb2.DESCRIPTOR.services_by_name["TeacherService"].full_name, preload=load)
