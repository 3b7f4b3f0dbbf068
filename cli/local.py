"""The in-process runner of ``montessori run``: the loop's stage requests dispatched straight to the worker
cores in this process (no services), through the same validation the worker services apply.

It is the one place outside the services that knows both the controller and the workers: the controller
(``services/controller``) only builds and sends montessori.v1 requests.
"""

from __future__ import annotations

from pathlib import Path

from cli.sections import resolved  # noqa: F401 - montessori config's resolution, with montessori plan's (no torch)
from common.artifacts import ArtifactStore, open_store
from common.device import resolve_device
from common.manifests import StageResult
from common.progress import Progress, no_progress
from common.publication import write_once
from common.stages import stage_of
from services.controller.config import RunConfig
from services.controller.loop import LoopRunner
from services.teacher.backend import BackendCache


class LocalExecutor:
    """Runs each stage request with its worker's stage function (from the stage registry, as a worker service
    does); keeps one teacher loaded between stages. ``model_roots``: the node folders a request's model paths
    must lie in, as on a service (None: any folder; the in-process loop's models are the run config's own)."""

    def __init__(
        self,
        store: ArtifactStore,
        *,
        dtype: str = "float32",
        device: str = "auto",
        model_roots: tuple[Path, ...] | None = None,
    ):
        self.store = store
        self.model_roots = model_roots
        #: The teacher runs here; Evaluate, Score under ``auto`` and training resolve ``device`` as a service does.
        self.device = resolve_device(device, field="device")
        self.teachers = BackendCache(dtype, self.device)
        self.resources = {"backends": self.teachers, "device": device}

    def _work(self, request):
        return stage_of(request).work(self.store, request, model_roots=self.model_roots, resources=self.resources)

    def run(self, request, progress: Progress = no_progress) -> StageResult:
        return write_once(self.store, request, self._work(request))(progress)

    def check(self, request) -> None:
        message = type(request)()
        message.CopyFrom(request)
        message.validate_only = True
        self._work(message)

    def close(self) -> None:
        self.teachers = BackendCache(self.teachers.dtype, self.device)
        self.resources["backends"] = self.teachers


def local_runner(config: RunConfig, **kwargs) -> LoopRunner:
    """A loop whose stages run in this process, on the config's own store."""
    store = kwargs.pop("store", None) or open_store(config.artifacts)
    return LoopRunner(config, store=store, executor=LocalExecutor(store, dtype=config.models.dtype), **kwargs)
