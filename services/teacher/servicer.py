"""TeacherService: the gRPC layer over ``services.teacher.stages`` and the teacher backends."""

from __future__ import annotations

import threading

from common.artifacts import ArtifactStore
from common.job_rpcs import JobRpcs
from common.jobs import JobManager
from common.models import ModelRef
from common.request_fields import model_from_proto
from common.service_main import ServiceParts
from montessori.v1 import common_pb2, teacher_pb2, teacher_pb2_grpc
from services.teacher.backend import BackendCache, TeacherBackends
from services.teacher.config import TeacherServiceConfig
from services.teacher.stages import version_name


class TeacherServicer(JobRpcs, teacher_pb2_grpc.TeacherServiceServicer, service="teacher"):
    """Generate (from the stage registry) and the teacher-version RPCs, over ``backends``."""

    def __init__(self, store: ArtifactStore, jobs: JobManager, ready: threading.Event, backends: TeacherBackends):
        super().__init__(store, jobs, ready, {"backends": backends})
        self.backends = backends

    def LoadTeacherVersion(self, request, context):
        self.require_ready()
        name = version_name(request.name)
        teacher = model_from_proto(request.teacher, self.store, field="teacher", roots=self.model_roots)
        return teacher_pb2.LoadTeacherVersionResponse(
            version=version_to_proto(self.backends.load_version(name, teacher))
        )

    def UnloadTeacherVersion(self, request, context):
        self.require_ready()
        self.backends.unload_version(version_name(request.name))
        return teacher_pb2.UnloadTeacherVersionResponse()

    def ListTeacherVersions(self, request, context):
        self.require_ready()
        return teacher_pb2.ListTeacherVersionsResponse(versions=[version_to_proto(v) for v in self.backends.versions()])


def version_to_proto(info: dict) -> teacher_pb2.TeacherVersion:
    model = info.get("model") or {}
    canary = info.get("canary")
    return teacher_pb2.TeacherVersion(
        name=info["name"],
        backend=info.get("backend", ""),
        adapter_digest=info.get("adapter_digest", ""),
        rank=int(info.get("rank", 0)),
        exact=bool(info.get("exact", True)),
        model=common_pb2.ModelSpec(
            path=model.get("path", ""), adapters=[common_pb2.ArtifactRef(uri=a) for a in model.get("adapters", [])]
        ),
        canary=teacher_pb2.CanaryResult(
            **{k: canary[k] for k in ("passed", "tokens", "max_abs_diff", "mean_abs_diff", "tolerance", "seconds")}
        )
        if canary
        else None,
    )


def make_backends(config: TeacherServiceConfig) -> TeacherBackends:
    """The configured backend; vLLM is imported only when chosen (it lives in its own environment)."""
    if config.backend == "vllm":
        from pathlib import Path

        from common.envs import Env
        from services.teacher.vllm_backend import VLLMBackends

        return VLLMBackends(config.vllm, cache_dir=Path(Env.read().cache_dir))
    return BackendCache(config.dtype, config.device)


def build(
    store: ArtifactStore,
    jobs: JobManager,
    ready: threading.Event,
    *,
    preload: list[str] | None = None,
    config: TeacherServiceConfig | None = None,
) -> ServiceParts:
    backends = make_backends(config or TeacherServiceConfig())
    servicer = TeacherServicer(store, jobs, ready, backends)

    def load() -> None:
        for path in preload or []:
            backends.get(ModelRef(path))

    return ServiceParts(
        register=lambda server: teacher_pb2_grpc.add_TeacherServiceServicer_to_server(servicer, server),
        full_name=teacher_pb2.DESCRIPTOR.services_by_name["TeacherService"].full_name,
        preload=load,
    )
