"""What the loop hands a stage to: a typed stage request (montessori.v1) that runs in this process
(``cli/local.py``) or as a job on a worker service (``remote.py``), and the model versions it tracks.

Both executors take the same request messages and return the stage result read from the manifest
the worker published, so the loop is the same code either way.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Protocol

from common.artifacts import ArtifactRef
from common.manifests import StageResult
from common.progress import Progress
from common.protoconv import ref_to_proto
from montessori.v1 import common_pb2


@dataclass(frozen=True)
class LoopModel:
    """A model version as the loop tracks it: a node-local base folder (``path``) or a model in the store
    (``artifact``), plus adapters in the store, and the chat template to load its tokenizer with (``None``:
    the folder's own, or the default for a templateless one). The artifacts' digests travel in every stage
    request, so a stage is never reused on top of a model that was rebuilt differently."""

    path: str = ""
    artifact: ArtifactRef | None = None
    adapters: tuple[ArtifactRef, ...] = field(default=())
    chat_template: str | None = None

    def with_adapter(self, ref: ArtifactRef) -> LoopModel:
        return replace(self, adapters=self.adapters + (ref,))

    @classmethod
    def stored(cls, ref: ArtifactRef) -> LoopModel:
        """A whole model folder published in the store (a trained student, a fully fine-tuned teacher)."""
        return cls(artifact=ref)

    @property
    def adapter_uris(self) -> tuple[str, ...]:
        return tuple(ref.uri for ref in self.adapters)

    @property
    def label(self) -> str:
        return f"teacher-r{len(self.adapters)}"

    def to_proto(self) -> common_pb2.ModelSpec:
        return common_pb2.ModelSpec(
            path=self.path,
            artifact=ref_to_proto(self.artifact) if self.artifact else None,
            adapters=[ref_to_proto(a) for a in self.adapters],
            chat_template=self.chat_template,
        )  # None leaves it unset


class StageExecutor(Protocol):
    """Runs the loop's stage requests: GenerateRequest, TrainStudentRequest, ScoreRequest, AssembleRequest,
    TrainTeacherRequest and EvaluateRequest."""

    def run(self, request, progress: Progress) -> StageResult:
        """Run the stage the request describes and return its published result."""

    def check(self, request) -> None:
        """Validate the request as its worker would (``validate_only``); errors name the request's fields."""

    def close(self) -> None:
        """Release connections and loaded models."""
