"""The teacher service's stage request, validated into a unit of work (the servicer submits it as a job; the
in-process runner calls it directly)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from common.artifacts import ArtifactStore
from common.errors import InvalidArgument
from common.manifests import StageResult
from common.progress import Progress
from common.request_fields import count, local_artifact, model_from_proto, output_prefix, seed, settings
from montessori.v1 import teacher_pb2
from services.teacher import tasks
from services.teacher.backend import TeacherBackends
from services.teacher.config import SynthesisConfig

Work = Callable[[Progress], StageResult]
MAX_PROMPTS = 1_000_000


def generate(
    store: ArtifactStore,
    request: teacher_pb2.GenerateRequest,
    backends: TeacherBackends,
    *,
    model_roots: tuple[Path, ...] | None = None,
) -> Work | None:
    """A candidate set written by the requested teacher version (loaded into ``backends`` when it runs)."""
    config = settings(request.synthesis, SynthesisConfig, field="synthesis")
    stage_seed = seed(request.seed)
    teacher = model_from_proto(request.teacher, store, field="teacher", roots=model_roots)
    label = request.teacher_label or f"teacher-r{len(teacher.adapters)}"
    version = version_name(request.teacher_version, field="teacher_version") if request.teacher_version else label
    if request.validate_only:
        return None
    seed_path = local_artifact(store, request.seed_set, field="seed_set")
    prefix = output_prefix(request.output_prefix)
    prompts = count(request.num_prompts, field="num_prompts", maximum=MAX_PROMPTS)
    target = count(request.target_examples, field="target_examples", maximum=MAX_PROMPTS)
    if bool(prompts) == bool(target):
        raise InvalidArgument("set exactly one of num_prompts and target_examples (> 0)", field="num_prompts")

    def work(progress: Progress) -> StageResult:
        backend = backends.get(teacher, version=version)
        served = next((v for v in backends.versions() if v["name"] == version), {"name": version})
        return tasks.generate(
            store,
            prefix,
            backend=backend,
            teacher=teacher,
            teacher_label=label,
            served_version=served,
            seed_path=seed_path,
            config=config,
            seed=stage_seed,
            num_prompts=prompts or None,
            target=target or None,
            progress=progress,
        )

    return work


def version_name(value: str, *, field: str = "name") -> str:
    """A version name: 1-128 characters of letters, digits and ``-_.:/``."""
    if not value or len(value) > 128 or not all(ch.isalnum() or ch in "-_.:/" for ch in value):
        raise InvalidArgument("must be 1-128 characters of letters, digits and -_.:/", field=field)
    return value
