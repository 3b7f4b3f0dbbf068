"""How the loop runs a stage: in this process, or as a job on a worker service.

Both executors take and return artifact URIs, so the loop is the same code either way.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from common.artifacts import ArtifactStore
from common.manifests import StageResult
from common.models import ModelRef
from common.progress import Progress, no_progress
from services.influence.config import InfluenceConfig
from services.preference.config import PreferenceConfig
from services.teacher.config import SynthesisConfig
from services.trainer.config import DPOSettings, SFTSettings


@dataclass(frozen=True)
class LoopModel:
    """A model version as the loop tracks it: a node-local base folder or a store URI, plus adapter URIs, and the
    chat template to load its tokenizer with (``None``: the folder's own, or the default for a templateless one)."""

    path: str = ""
    uri: str = ""
    adapter_uris: tuple[str, ...] = field(default=())
    #: Digests of the artifacts above (uri, then adapters): part of a stage's request fingerprint,
    #: so a stage is never reused on top of a teacher or student that was rebuilt differently.
    digests: tuple[str, ...] = field(default=())
    chat_template: str | None = None

    def with_adapter(self, ref) -> "LoopModel":
        return LoopModel(self.path, self.uri, self.adapter_uris + (ref.uri,), self.digests + (ref.sha256,), self.chat_template)

    @classmethod
    def artifact(cls, ref) -> "LoopModel":
        return cls(uri=ref.uri, digests=(ref.sha256,))

    @property
    def label(self) -> str:
        return f"teacher-r{len(self.adapter_uris)}"


class StageExecutor(Protocol):
    """The six units of work of a loop (evaluation included)."""

    def generate(self, prefix: str, *, teacher: LoopModel, seed_uri: str, config: SynthesisConfig, seed: int,
                 num_prompts: int | None, target: int | None, progress: Progress) -> StageResult: ...

    def train_student(self, prefix: str, *, student: LoopModel, candidates_uri: str, settings: SFTSettings, seed: int,
                      save_optimizer: bool, limit: int | None, progress: Progress) -> StageResult: ...

    def score(self, prefix: str, *, warmup_uri: str, reference_uri: str, candidates_uri: str, config: InfluenceConfig,
              progress: Progress) -> StageResult: ...

    def assemble(self, prefix: str, *, candidates_uri: str, scores_uri: str, config: PreferenceConfig,
                 progress: Progress) -> StageResult: ...

    def train_teacher(self, prefix: str, *, teacher: LoopModel, pairs_uri: str, settings: DPOSettings, seed: int,
                      progress: Progress) -> StageResult: ...

    def evaluate(self, prefix: str, *, model: LoopModel, rows_uri: str, batch_size: int, limit: int | None,
                 progress: Progress) -> StageResult: ...


class InProcessExecutor:
    """Runs each stage's task directly (``montessori run``); keeps one teacher loaded between stages."""

    def __init__(self, store: ArtifactStore, *, dtype: str = "float32"):
        from services.teacher.backend import BackendCache

        self.store = store
        self.teachers = BackendCache(dtype)

    def _local(self, uri: str) -> Path:
        return self.store.local_path(self.store.key_of(uri))

    def model(self, model: LoopModel) -> ModelRef:
        base = model.path or str(self._local(model.uri))
        return ModelRef(base, tuple(str(self._local(u)) for u in model.adapter_uris), model.chat_template)

    def generate(self, prefix, *, teacher, seed_uri, config, seed, num_prompts, target, progress=no_progress):
        from services.teacher import tasks

        ref = self.model(teacher)
        return tasks.generate(self.store, prefix, backend=self.teachers.get(ref, field="models.teacher"), teacher=ref,
                              teacher_label=teacher.label,
                              seed_path=self._local(seed_uri), config=config, seed=seed, num_prompts=num_prompts,
                              target=target, progress=progress)

    def train_student(self, prefix, *, student, candidates_uri, settings, seed, save_optimizer, limit, progress=no_progress):
        from services.trainer import tasks

        return tasks.train_student(self.store, prefix, student=self.model(student), candidates_path=self._local(candidates_uri),
                                   settings=settings, seed=seed, save_optimizer=save_optimizer, limit=limit, progress=progress)

    def score(self, prefix, *, warmup_uri, reference_uri, candidates_uri, config, progress=no_progress):
        from services.influence import tasks

        return tasks.score(self.store, prefix, warmup_dir=self._local(warmup_uri), reference_path=self._local(reference_uri),
                           candidates_path=self._local(candidates_uri), config=config, progress=progress)

    def assemble(self, prefix, *, candidates_uri, scores_uri, config, progress=no_progress):
        from services.preference import tasks

        return tasks.assemble(self.store, prefix, candidates_path=self._local(candidates_uri),
                              scores_path=self._local(scores_uri), config=config)

    def train_teacher(self, prefix, *, teacher, pairs_uri, settings, seed, progress=no_progress):
        from services.trainer import tasks

        return tasks.train_teacher(self.store, prefix, teacher=self.model(teacher), pairs_path=self._local(pairs_uri),
                                   settings=settings, seed=seed, progress=progress)

    def evaluate(self, prefix, *, model, rows_uri, batch_size, limit, progress=no_progress):
        from services.influence import tasks

        return tasks.evaluate(self.store, prefix, model=self.model(model), rows_path=self._local(rows_uri),
                              batch_size=batch_size, limit=limit, field="student", progress=progress)
