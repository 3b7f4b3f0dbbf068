"""The trainer service's units of work on artifacts: DPO of the teacher, SFT of the student."""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

from common.artifacts import ArtifactStore
from common.chat import instruction_text
from common.jsonl import read_jsonl
from common.manifests import StageResult, input_ref, model_input, publish_manifest
from common.models import ModelRef
from common.progress import Progress, no_progress
from services.trainer.config import DPOSettings, SFTSettings
from services.trainer.dpo import train_dpo
from services.trainer.sft import train_sft

MODEL = "model"


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
) -> StageResult:
    """SFT ``student`` on the candidates' (instruction, response); publish ``<prefix>/model`` (with AdamW state if
    asked)."""
    started = time.time()
    rows = read_jsonl(candidates_path, required=("instruction", "response"))
    rows = rows[:limit] if limit else rows
    examples = [(instruction_text(r["instruction"], r.get("input", "")), r["response"]) for r in rows]
    with tempfile.TemporaryDirectory(prefix="montessori-student-") as scratch:
        result = train_sft(
            student,
            examples,
            settings,
            Path(scratch) / MODEL,
            seed=seed,
            save_optimizer=save_optimizer,
            progress=progress,
            stage=f"{prefix.rsplit('/', 1)[-1]}: sft",
        )
        ref = store.put_dir(f"{prefix}/{MODEL}", result.output_dir, move=True)
    inputs = {"student": model_input(store, student), "candidates": input_ref(store, candidates_path)}
    return publish_manifest(
        store,
        prefix,
        stage="train-student",
        inputs=inputs,
        config={"sft": settings, "seed": seed, "save_optimizer": save_optimizer, "limit": limit},
        outputs={"model": ref},
        metrics=result.metrics(),
        started=started,
    )


def train_teacher(
    store: ArtifactStore,
    prefix: str,
    *,
    teacher: ModelRef,
    pairs_path: Path,
    settings: DPOSettings,
    seed: int,
    progress: Progress = no_progress,
) -> StageResult:
    """DPO the teacher on the pairs; publish ``<prefix>/adapter`` (LoRA) or ``<prefix>/model`` (full)."""
    started = time.time()
    pairs = read_jsonl(pairs_path, required=("prompt", "chosen", "rejected"))
    role = "adapter" if settings.lora else MODEL
    with tempfile.TemporaryDirectory(prefix="montessori-teacher-") as scratch:
        result = train_dpo(
            teacher,
            pairs,
            settings,
            Path(scratch) / role,
            seed=seed,
            progress=progress,
            stage=f"{prefix.rsplit('/', 1)[-1]}: dpo",
        )
        ref = store.put_dir(f"{prefix}/{role}", result.output_dir, move=True)
    inputs = {"teacher": model_input(store, teacher), "pairs": input_ref(store, pairs_path)}
    return publish_manifest(
        store,
        prefix,
        stage="train-teacher",
        inputs=inputs,
        config={"dpo": settings, "seed": seed},
        outputs={role: ref},
        metrics=result.metrics(),
        started=started,
    )
