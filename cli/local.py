"""The in-process runner of ``montessori run``: the loop's stage requests dispatched straight to the worker
cores in this process (no services), through the same validation the worker services apply.

It is the one place outside the services that knows both the controller and the workers: the controller
(``services/controller``) only builds and sends montessori.v1 requests.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from cli.sections import STAGE_SECTIONS, resolved  # noqa: F401 - the table lives with montessori plan's (no torch)
from common.artifacts import ArtifactStore, open_store
from common.device import resolve_device
from common.manifests import StageResult
from common.progress import Progress, no_progress
from common.publication import write_once
from montessori.v1 import influence_pb2, preference_pb2, teacher_pb2, trainer_pb2
from services.controller.config import RunConfig
from services.controller.loop import LoopRunner
from services.influence import stages as influence
from services.preference import stages as preference
from services.teacher import stages as teacher
from services.teacher.backend import BackendCache
from services.trainer import stages as trainer


class LocalExecutor:
    """Runs each stage request with its worker's own stage function; keeps one teacher loaded between stages."""

    def __init__(self, store: ArtifactStore, *, dtype: str = "float32", device: str = "auto"):
        self.store = store
        #: The teacher and Evaluate run here (Score on its request's influence.device, training as TRL places it).
        self.device = resolve_device(device, field="device")
        self.teachers = BackendCache(dtype, self.device)
        self._stages: dict[type, Callable[[ArtifactStore, Any], Any]] = {
            teacher_pb2.GenerateRequest: lambda store, request: teacher.generate(store, request, self.teachers),
            trainer_pb2.TrainStudentRequest: trainer.train_student,
            trainer_pb2.TrainTeacherRequest: trainer.train_teacher,
            influence_pb2.ScoreRequest: influence.score,
            influence_pb2.EvaluateRequest: lambda store, request: influence.evaluate(
                store, request, device=self.device
            ),
            preference_pb2.AssembleRequest: preference.assemble,
        }

    def run(self, request, progress: Progress = no_progress) -> StageResult:
        work = self._stages[type(request)](self.store, request)
        return write_once(self.store, request, work)(progress)

    def check(self, request) -> None:
        message = type(request)()
        message.CopyFrom(request)
        message.validate_only = True
        self._stages[type(request)](self.store, message)

    def close(self) -> None:
        self.teachers = BackendCache(self.teachers.dtype, self.device)


def local_runner(config: RunConfig, **kwargs) -> LoopRunner:
    """A loop whose stages run in this process, on the config's own store."""
    store = kwargs.pop("store", None) or open_store(config.artifacts)
    return LoopRunner(config, store=store, executor=LocalExecutor(store, dtype=config.models.dtype), **kwargs)
