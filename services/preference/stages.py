"""The preference service's stage request, validated into a unit of work (the servicer submits it as a job;
the in-process runner calls it directly)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from common.artifacts import ArtifactStore
from common.manifests import StageResult
from common.progress import Progress, one_step
from common.request_fields import local_artifact, output_prefix, settings
from montessori.v1 import preference_pb2
from services.preference import tasks
from services.preference.config import PreferenceConfig

Work = Callable[[Progress], StageResult]


def assemble(
    store: ArtifactStore, request: preference_pb2.AssembleRequest, *, model_roots: tuple[Path, ...] | None = None
) -> Work | None:
    """Pairs of helpful and harmful candidates within each prompt group."""
    config = settings(request.preference, PreferenceConfig, field="preference")
    if request.validate_only:
        return None
    candidates = local_artifact(store, request.candidates, field="candidates")
    scores = local_artifact(store, request.scores, field="scores")
    prefix = output_prefix(request.output_prefix)
    return one_step(
        "pairs", lambda: tasks.assemble(store, prefix, candidates_path=candidates, scores_path=scores, config=config)
    )
