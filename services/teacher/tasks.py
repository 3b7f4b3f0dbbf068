"""The teacher service's unit of work on artifacts: write a candidate set."""

from __future__ import annotations

import time
from pathlib import Path

from common.artifacts import ArtifactStore
from common.jsonl import read_instruction_rows
from common.manifests import StageResult, input_ref, model_input, publish_manifest
from common.models import ModelRef
from common.progress import Progress, no_progress
from services.teacher.backend import GenerationBackend
from services.teacher.config import SynthesisConfig
from services.teacher.prompts import seed_examples
from services.teacher.synthesis import Synthesizer

CANDIDATES = "candidates.jsonl"


def generate(
    store: ArtifactStore,
    prefix: str,
    *,
    backend: GenerationBackend,
    teacher: ModelRef,
    teacher_label: str,
    seed_path: Path,
    config: SynthesisConfig,
    seed: int,
    served_version: dict | None = None,
    num_prompts: int | None = None,
    target: int | None = None,
    progress: Progress = no_progress,
) -> StageResult:
    """Synthesise and answer candidates; publish ``<prefix>/candidates.jsonl`` and its manifest."""
    started = time.time()
    seeds = seed_examples(read_instruction_rows(seed_path))  # instruction + input, as the student sees them
    synthesizer = Synthesizer(backend, config, seeds, teacher_label=teacher_label)
    tokens_before = backend.tokens_generated
    name = prefix.rsplit("/", 1)[-1]
    candidates, stats = synthesizer.synthesize(
        prefix=name, seed=seed, num_prompts=num_prompts, target=target, progress=progress
    )
    ref = store.put_jsonl(f"{prefix}/{CANDIDATES}", (c.to_dict() for c in candidates))
    seconds = time.time() - started
    tokens = backend.tokens_generated - tokens_before
    metrics = {
        **stats.to_dict(),
        "groups": len({c.group_id for c in candidates}),
        "seconds": round(seconds, 2),
        "tokens": tokens,
        "tokens_per_second": tokens / max(seconds, 1e-9),
    }
    # Which version wrote the set: the model, its label and, for an engine, what it served (digest, canary).
    inputs = {
        "seed_set": input_ref(store, seed_path),
        "teacher": {"model": model_input(store, teacher), "label": teacher_label, "served": served_version or {}},
    }
    return publish_manifest(
        store,
        prefix,
        stage="generate",
        inputs=inputs,
        config={"synthesis": config, "seed": seed, "num_prompts": num_prompts, "target": target},
        outputs={"candidates": ref},
        metrics=metrics,
        started=started,
    )
