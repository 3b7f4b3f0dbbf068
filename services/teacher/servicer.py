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
from montessori.v1 import common_pb2, teacher_pb2, teacher_pb2_grpc
from services.teacher import tasks
from services.teacher.backend import BackendCache, TeacherBackends
from services.teacher.config import SynthesisConfig, TeacherServiceConfig

MAX_PROMPTS = 1_000_000


class TeacherServicer(JobRpcs, teacher_pb2_grpc.TeacherServiceServicer):
    def __init__(self, store: ArtifactStore, jobs: JobManager, ready: threading.Event, backends: TeacherBackends):
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
        version = version_name(request.teacher_version, field="teacher_version") if request.teacher_version else label

        def work(progress):
            backend = self.backends.get(teacher, version=version)
            served = next((v for v in self.backends.versions() if v["name"] == version), {"name": version})
            return tasks.generate(self.store, prefix, backend=backend, teacher=teacher, teacher_label=label, served_version=served,
                                  seed_path=seed_path, config=config, seed=request.seed, num_prompts=prompts or None,
                                  target=target or None, progress=progress)

        job = self.jobs.submit(request.request_id, "generate", work, fingerprint=fingerprint(request))
        return teacher_pb2.GenerateResponse(job=job_to_proto(job))

    def LoadTeacherVersion(self, request, context):
        self.require_ready()
        name = version_name(request.name)
        teacher = model_from_proto(request.teacher, self.store, field="teacher")
        return teacher_pb2.LoadTeacherVersionResponse(version=version_to_proto(self.backends.load_version(name, teacher)))

    def UnloadTeacherVersion(self, request, context):
        self.require_ready()
        self.backends.unload_version(version_name(request.name))
        return teacher_pb2.UnloadTeacherVersionResponse()

    def ListTeacherVersions(self, request, context):
        self.require_ready()
        return teacher_pb2.ListTeacherVersionsResponse(versions=[version_to_proto(v) for v in self.backends.versions()])


def version_name(value: str, *, field: str = "name") -> str:
    """A version name: 1-128 characters of letters, digits and ``-_.:/``."""
    if not value or len(value) > 128 or not all(ch.isalnum() or ch in "-_.:/" for ch in value):
        raise InvalidArgument("must be 1-128 characters of letters, digits and -_.:/", field=field)
    return value


def version_to_proto(info: dict) -> teacher_pb2.TeacherVersion:
    model = info.get("model") or {}
    canary = info.get("canary")
    return teacher_pb2.TeacherVersion(
        name=info["name"], backend=info.get("backend", ""), adapter_digest=info.get("adapter_digest", ""),
        rank=int(info.get("rank", 0)), exact=bool(info.get("exact", True)),
        model=common_pb2.ModelSpec(path=model.get("path", ""), adapter_uris=model.get("adapters", [])),
        canary=teacher_pb2.CanaryResult(**{k: canary[k] for k in ("passed", "tokens", "max_abs_diff", "mean_abs_diff",
                                                                   "tolerance", "seconds")}) if canary else None)


def make_backends(config: TeacherServiceConfig) -> TeacherBackends:
    """The configured backend; vLLM is imported only when chosen (it lives in its own environment)."""
    if config.backend == "vllm":
        from pathlib import Path

        from common.envs import Env
        from services.teacher.vllm_backend import VLLMBackends

        return VLLMBackends(config.vllm, cache_dir=Path(Env.read().cache_dir))
    return BackendCache(config.dtype)


def build(store: ArtifactStore, jobs: JobManager, ready: threading.Event, *, preload: list[str] | None = None,
          config: TeacherServiceConfig | None = None) -> ServiceParts:
    backends = make_backends(config or TeacherServiceConfig())
    servicer = TeacherServicer(store, jobs, ready, backends)

    def load() -> None:
        for path in preload or []:
            backends.get(ModelRef(path))

    return ServiceParts(register=lambda server: teacher_pb2_grpc.add_TeacherServiceServicer_to_server(servicer, server),
                        full_name=teacher_pb2.DESCRIPTOR.services_by_name["TeacherService"].full_name, preload=load)
