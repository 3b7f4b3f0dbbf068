"""The stage registry: one table of the stages a loop runs on the workers.

Each row names a stage request message (montessori.v1), the worker service and RPC that run it, the kind of
job it becomes, the stage function that validates it into a unit of work (``services/<worker>/stages.py``), the
worker resources that function takes beside the store and the request, the settings it resolves (request
field, run-config section, worker config) and its typed result. The worker servicers (``common/job_rpcs.py``),
the controller's remote executor (``services/controller/remote.py``), the in-process executor and the CLI's
stage commands (``cli/local.py``) and ``montessori config`` / ``plan`` (``cli/sections.py``) all read it, so a
stage is declared here once.

Stage functions and worker configs are named by import path and imported when first used: the controller
reads only the service and RPC of a row, and imports no worker package (nor torch).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from google.protobuf.message import Message

from common.stage_results import AssembleMetrics, EvaluateMetrics, ScoreMetrics, StageMetrics, TrainTeacherMetrics
from montessori.v1 import influence_pb2, preference_pb2, teacher_pb2, trainer_pb2


def _load(path: str) -> Any:
    """``"package.module:name"`` -> that object."""
    module, _, name = path.partition(":")
    return getattr(importlib.import_module(module), name)


@dataclass(frozen=True)
class Settings:
    """A settings message of a stage request: its field, the run config's section that fills it, and the worker
    config (dataclass) it resolves into (defaults, ranges, help)."""

    field: str
    section: str
    config: str  # "module:Class"

    def config_class(self) -> type:
        return _load(self.config)


@dataclass(frozen=True)
class Stage:
    """One stage: what a caller sends, who runs it, and what it returns."""

    request: type[Message]
    response: type[Message]
    service: str
    rpc: str
    #: The job's kind (``Job.kind``, logs, metrics).
    kind: str
    #: The worker's stage function, ``function(store, request, *, model_roots, **resources) -> Work | None``.
    function: str
    #: Worker resources the function takes by keyword: ``backends`` (the teacher's loaded models), ``device``
    #: (the service's device), ``launcher`` (the trainer's multi-process launch).
    resources: tuple[str, ...] = ()
    settings: tuple[Settings, ...] = ()
    #: Its typed metrics (common/stage_results.py), where a caller reads them; None: read by no one (logged only).
    result: type[StageMetrics] | None = None

    def metrics(self, published: Mapping[str, Any]) -> StageMetrics:
        """The typed result of this stage's published metrics."""
        if self.result is None:
            raise TypeError(f"the {self.kind} stage has no typed result")
        return self.result.from_metrics(dict(published))

    def work(
        self,
        store,
        request: Message,
        *,
        model_roots: tuple[Path, ...] | None = None,
        resources: Mapping[str, Any] = {},  # noqa: B006 - read only
    ) -> Callable | None:
        """The request validated by its worker's stage function into a unit of work (None: ``validate_only``)."""
        given = {name: resources[name] for name in self.resources if name in resources}
        return _load(self.function)(store, request, model_roots=model_roots, **given)


#: Every stage request a worker runs, in the order of a round.
STAGES: tuple[Stage, ...] = (
    Stage(
        teacher_pb2.GenerateRequest,
        teacher_pb2.GenerateResponse,
        "teacher",
        "Generate",
        "generate",
        "services.teacher.stages:generate",
        resources=("backends",),
        settings=(Settings("synthesis", "synthesis", "services.teacher.config:SynthesisConfig"),),
    ),
    Stage(
        trainer_pb2.TrainStudentRequest,
        trainer_pb2.TrainStudentResponse,
        "trainer",
        "TrainStudent",
        "train-student",
        "services.trainer.stages:train_student",
        resources=("launcher", "device"),
        settings=(
            Settings("sft", "warmup", "services.trainer.config:WarmupSettings"),  # warmup = true
            Settings("sft", "sft", "services.trainer.config:SFTSettings"),
        ),
    ),
    Stage(
        influence_pb2.ScoreRequest,
        influence_pb2.ScoreResponse,
        "influence",
        "Score",
        "score",
        "services.influence.stages:score",
        resources=("device",),
        settings=(Settings("influence", "influence", "services.influence.config:InfluenceConfig"),),
        result=ScoreMetrics,
    ),
    Stage(
        influence_pb2.MergeScoresRequest,
        influence_pb2.MergeScoresResponse,
        "influence",
        "MergeScores",
        "merge-scores",
        "services.influence.stages:merge_scores",
        settings=(Settings("influence", "influence", "services.influence.config:InfluenceConfig"),),
        result=ScoreMetrics,
    ),
    Stage(
        preference_pb2.AssembleRequest,
        preference_pb2.AssembleResponse,
        "preference",
        "Assemble",
        "assemble",
        "services.preference.stages:assemble",
        settings=(Settings("preference", "preference", "services.preference.config:PreferenceConfig"),),
        result=AssembleMetrics,
    ),
    Stage(
        trainer_pb2.TrainTeacherRequest,
        trainer_pb2.TrainTeacherResponse,
        "trainer",
        "TrainTeacher",
        "train-teacher",
        "services.trainer.stages:train_teacher",
        resources=("launcher", "device"),
        settings=(Settings("dpo", "dpo", "services.trainer.config:DPOSettings"),),
        result=TrainTeacherMetrics,
    ),
    Stage(
        influence_pb2.EvaluateRequest,
        influence_pb2.EvaluateResponse,
        "influence",
        "Evaluate",
        "evaluate",
        "services.influence.stages:evaluate",
        resources=("device",),
        result=EvaluateMetrics,
    ),
)

_BY_REQUEST = {stage.request: stage for stage in STAGES}


def stage_of(request: Message | type[Message]) -> Stage:
    """The registry row of a stage request (or request type); KeyError for a message that is no stage's."""
    return _BY_REQUEST[request if isinstance(request, type) else type(request)]


def stages_of(service: str) -> tuple[Stage, ...]:
    """The stages one worker service runs."""
    return tuple(stage for stage in STAGES if stage.service == service)


def stage_sections() -> dict[str, type]:
    """The run config's stage sections and the worker config each resolves into, in the order of a round."""
    return {s.section: s.config_class() for stage in STAGES for s in stage.settings}
