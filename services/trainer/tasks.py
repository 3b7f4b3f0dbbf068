"""The trainer service's units of work on artifacts: DPO of the teacher, SFT of the student."""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

from common.artifacts import ArtifactStore
from common.chat import instruction_text
from common.checkpoints import StageCheckpoint, work_digest
from common.config import to_dict
from common.jsonl import read_jsonl
from common.manifests import StageResult, code_version, input_ref, model_input, publish_manifest
from common.models import ModelRef
from common.progress import Progress, no_progress
from services.trainer.config import DPOSettings, SFTSettings
from services.trainer.dpo import DPOResult, train_dpo
from services.trainer.launch import Launcher
from services.trainer.sft import SFTResult, train_sft

MODEL = "model"


def stage_checkpoint(
    store: ArtifactStore,
    prefix: str,
    request_digest: str,
    inputs: dict,
    config: dict,
    settings: SFTSettings | DPOSettings,
    *,
    stage: str,
) -> StageCheckpoint | None:
    """The store checkpoint of this training run (None when ``checkpoint_every`` is 0), identified by the request,
    the inputs' digests, the settings and the code version: a checkpoint of any other work is not resumed."""
    if not settings.checkpoint_every:
        return None
    work = work_digest(request=request_digest, inputs=inputs, config=to_dict(config), code=code_version())
    return StageCheckpoint(store, prefix, work, stage=stage)


def student_examples(candidates_path: Path, limit: int | None) -> list[tuple[str, str]]:
    """The (user text, response) pairs the student is trained on: the first ``limit`` candidates (all: None)."""
    rows = read_jsonl(candidates_path, required=("instruction", "response"))
    rows = rows[:limit] if limit else rows
    return [(instruction_text(r["instruction"], r.get("input", "")), r["response"]) for r in rows]


def launch_config(config: dict, launcher: Launcher | None) -> dict:
    """The stage's config as recorded (manifest, checkpoint identity): with the process count when it is more than
    one, since the ranks' data order differs (and a checkpoint holds one RNG state per rank)."""
    return config if launcher is None else {**config, "processes": launcher.processes}


def run_in_ranks(
    launcher: Launcher,
    work: dict,
    scratch: Path,
    result_type: type[SFTResult] | type[DPOResult],
    progress: Progress,
    stage: str,
    checkpoint: StageCheckpoint | None,
) -> SFTResult | DPOResult:
    """Train ``work`` (see ``services.trainer.rank``) in the launcher's ranks; rank 0's result."""
    done = launcher.run(work, scratch / "launch", progress=progress, stage=stage, checkpoint=checkpoint)
    fields = {k: v for k, v in done.items() if k in result_type.__dataclass_fields__ and k != "output_dir"}
    return result_type(output_dir=Path(done["output_dir"]), **fields)


def publish(
    store: ArtifactStore,
    prefix: str,
    stage: str,
    role: str,
    result: SFTResult | DPOResult,
    inputs: dict,
    config: dict,
    checkpoint: StageCheckpoint | None,
    started: float,
) -> StageResult:
    """Move the trained folder to ``<prefix>/<role>``, publish the stage's manifest, then drop its checkpoint."""
    ref = store.put_dir(f"{prefix}/{role}", result.output_dir, move=True)
    published = publish_manifest(
        store,
        prefix,
        stage=stage,
        inputs=inputs,
        config=config,
        outputs={role: ref},
        metrics=result.metrics(),
        started=started,
    )
    if checkpoint is not None:
        checkpoint.remove()
    return published


def train_student(
    store: ArtifactStore,
    prefix: str,
    *,
    student: ModelRef,
    candidates_path: Path,
    settings: SFTSettings,
    seed: int,
    save_optimizer: bool = False,
    limit: int | None = None,
    progress: Progress = no_progress,
    request_digest: str = "",
    launcher: Launcher | None = None,
    device: str = "auto",
) -> StageResult:
    """SFT ``student`` on the candidates' (instruction, response); publish ``<prefix>/model`` (with AdamW state if
    asked). With ``settings.checkpoint_every`` a checkpoint is kept in ``<prefix>-checkpoint`` and a job of the same
    work (``request_digest``, inputs and settings) resumes from it. With ``launcher``, the training runs in its
    ranks (see ``services.trainer.launch``) and rank 0's folder is published the same way."""
    started = time.time()
    examples = student_examples(candidates_path, limit)
    inputs = {"student": model_input(store, student), "candidates": input_ref(store, candidates_path)}
    config = launch_config({"sft": settings, "seed": seed, "save_optimizer": save_optimizer, "limit": limit}, launcher)
    checkpoint = stage_checkpoint(store, prefix, request_digest, inputs, config, settings, stage="train-student")
    stage = f"{prefix.rsplit('/', 1)[-1]}: sft"
    with tempfile.TemporaryDirectory(prefix="montessori-student-") as scratch:
        if launcher is None:
            result = train_sft(
                student,
                examples,
                settings,
                Path(scratch) / MODEL,
                seed=seed,
                save_optimizer=save_optimizer,
                progress=progress,
                stage=stage,
                checkpoint=checkpoint,
                device=device,
            )
        else:
            work = {
                "kind": "sft",
                "model": student.to_dict(),
                "candidates": str(candidates_path),
                "limit": limit,
                "settings": to_dict(settings),
                "seed": seed,
                "save_optimizer": save_optimizer,
                "output_dir": str(Path(scratch) / MODEL),
            }
            result = run_in_ranks(launcher, work, Path(scratch), SFTResult, progress, stage, checkpoint)
        return publish(store, prefix, "train-student", MODEL, result, inputs, config, checkpoint, started)


def train_teacher(
    store: ArtifactStore,
    prefix: str,
    *,
    teacher: ModelRef,
    pairs_path: Path,
    settings: DPOSettings,
    seed: int,
    progress: Progress = no_progress,
    request_digest: str = "",
    launcher: Launcher | None = None,
    device: str = "auto",
) -> StageResult:
    """DPO the teacher on the pairs; publish ``<prefix>/adapter`` (LoRA) or ``<prefix>/model`` (full). With
    ``settings.checkpoint_every`` a checkpoint is kept in ``<prefix>-checkpoint`` and a job of the same work
    (``request_digest``, inputs and settings) resumes from it. With ``launcher``, the training runs in its ranks
    (see ``services.trainer.launch``) and rank 0's folder is published the same way."""
    started = time.time()
    pairs = read_jsonl(pairs_path, required=("prompt", "chosen", "rejected"))
    role = "adapter" if settings.lora else MODEL
    inputs = {"teacher": model_input(store, teacher), "pairs": input_ref(store, pairs_path)}
    config = launch_config({"dpo": settings, "seed": seed}, launcher)
    checkpoint = stage_checkpoint(store, prefix, request_digest, inputs, config, settings, stage="train-teacher")
    stage = f"{prefix.rsplit('/', 1)[-1]}: dpo"
    with tempfile.TemporaryDirectory(prefix="montessori-teacher-") as scratch:
        if launcher is None:
            result = train_dpo(
                teacher,
                pairs,
                settings,
                Path(scratch) / role,
                seed=seed,
                progress=progress,
                stage=stage,
                checkpoint=checkpoint,
                device=device,
            )
        else:
            work = {
                "kind": "dpo",
                "model": teacher.to_dict(),
                "pairs": str(pairs_path),
                "settings": to_dict(settings),
                "seed": seed,
                "output_dir": str(Path(scratch) / role),
            }
            result = run_in_ranks(launcher, work, Path(scratch), DPOResult, progress, stage, checkpoint)
        return publish(store, prefix, "train-teacher", role, result, inputs, config, checkpoint, started)
