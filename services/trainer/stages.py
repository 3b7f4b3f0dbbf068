"""The trainer's stage requests, validated into units of work (the servicer submits them as jobs; the
in-process runner calls them directly): one function per request message."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from common.artifacts import ArtifactStore
from common.manifests import StageResult
from common.progress import Progress
from common.protoconv import content_fingerprint
from common.request_fields import count, local_artifact, model_from_proto, output_prefix, seed, settings
from montessori.v1 import trainer_pb2
from services.trainer import tasks
from services.trainer.config import DPOSettings, SFTSettings, WarmupSettings
from services.trainer.launch import Launcher

Work = Callable[[Progress], StageResult]


def train_student(
    store: ArtifactStore,
    request: trainer_pb2.TrainStudentRequest,
    *,
    model_roots: tuple[Path, ...] | None = None,
    launcher: Launcher | None = None,
    device: str = "auto",
) -> Work | None:
    """SFT of the student (``warmup``: the warm-up, with WarmupSettings' defaults and the AdamW state saved);
    ``launcher``: trained in several processes (None: in this one, on ``device``)."""
    sft = settings(request.sft, WarmupSettings if request.warmup else SFTSettings, field="sft")
    stage_seed = seed(request.seed)
    limit = count(request.limit, field="limit", maximum=100_000_000)
    student = model_from_proto(request.student, store, field="student", roots=model_roots)
    if request.validate_only:
        return None
    candidates = local_artifact(store, request.candidates, field="candidates")
    prefix = output_prefix(request.output_prefix)
    work = content_fingerprint(request)  # a job re-sent after a preemption resumes this request's checkpoint
    return lambda progress: tasks.train_student(
        store,
        prefix,
        student=student,
        candidates_path=candidates,
        settings=sft,
        seed=stage_seed,
        save_optimizer=request.warmup,
        limit=limit or None,
        progress=progress,
        request_digest=work,
        launcher=launcher,
        device=device,
    )


def train_teacher(
    store: ArtifactStore,
    request: trainer_pb2.TrainTeacherRequest,
    *,
    model_roots: tuple[Path, ...] | None = None,
    launcher: Launcher | None = None,
    device: str = "auto",
) -> Work | None:
    """DPO of the teacher on preference pairs; ``launcher``: trained in several processes (None: in this one, on
    ``device``)."""
    dpo = settings(request.dpo, DPOSettings, field="dpo")
    stage_seed = seed(request.seed)
    teacher = model_from_proto(request.teacher, store, field="teacher", roots=model_roots)
    if request.validate_only:
        return None
    pairs = local_artifact(store, request.pairs, field="pairs")
    prefix = output_prefix(request.output_prefix)
    work = content_fingerprint(request)  # a job re-sent after a preemption resumes this request's checkpoint
    return lambda progress: tasks.train_teacher(
        store,
        prefix,
        teacher=teacher,
        pairs_path=pairs,
        settings=dpo,
        seed=stage_seed,
        progress=progress,
        request_digest=work,
        launcher=launcher,
        device=device,
    )
