"""The loop's stage requests, built from its run config: one typed message per stage (montessori.v1).

The message is the stage's whole description: what the executor sends (or runs in process), what the
worker validates and runs, and, serialised canonically, the fingerprint the loop resumes by. Inputs are
artifact refs with digests, so a stage whose inputs changed has another fingerprint.
"""

from __future__ import annotations

from common.artifacts import ArtifactRef, ArtifactStore
from common.errors import InvalidArgument, MontessoriError, NotFound
from common.protoconv import ref_to_proto
from montessori.v1 import common_pb2, influence_pb2, preference_pb2, teacher_pb2, trainer_pb2
from services.controller.config import RunConfig, is_store_uri
from services.controller.executor import LoopModel


def base_model(value: str, store: ArtifactStore, *, field: str, chat_template: str | None = None) -> LoopModel:
    """A run config's model field as the loop tracks it: a node path stays a ``path`` (the worker checks it is
    inside its models directory), a store URI becomes an ``artifact`` pinned to the digest the store recorded
    for it (every worker downloads it once per node and verifies that digest). Errors name ``field``."""
    if not is_store_uri(value):
        return LoopModel(path=value, chat_template=chat_template)
    return LoopModel(artifact=stored_ref(value, store, field=field), chat_template=chat_template)


def stored_ref(uri: str, store: ArtifactStore, *, field: str) -> ArtifactRef:
    """The artifact at ``uri`` in ``store`` with its recorded digest: INVALID_ARGUMENT outside the store,
    NOT_FOUND when nothing is published there (both naming ``field``)."""
    try:
        key = store.key_of(uri)
    except InvalidArgument as err:
        raise InvalidArgument(f"{err.message} (the loop's store is {store.root_uri})", field=field) from None
    if not store.exists(key):
        raise NotFound(f"no artifact at {uri} (push a model with `montessori models push`)", field=field)
    try:
        digest = store.recorded_digest(key)
    except MontessoriError as err:
        raise type(err)(err.message, field=field) from None
    return ArtifactRef(store.uri(key), digest)


class StageRequests:
    """Builds the requests of one loop: its config's settings, its data sets and its teacher version names."""

    def __init__(self, config: RunConfig, loop_id: str, data: dict[str, ArtifactRef]):
        self.config, self.loop_id, self.data = config, loop_id, data

    def generate(
        self, at: str, teacher: LoopModel, *, seed: int, prompts: int = 0, target: int = 0
    ) -> teacher_pb2.GenerateRequest:
        """A candidate set from ``teacher``: ``prompts`` prompt groups, or ``target`` kept examples."""
        return teacher_pb2.GenerateRequest(
            teacher=teacher.to_proto(),
            teacher_label=teacher.label,
            seed_set=ref_to_proto(self.data["seed"]),
            # One engine may serve several loops: the version name is the loop's, e.g. `<loop-id>:teacher-r2`.
            teacher_version=f"{self.loop_id}:{teacher.label}",
            output_prefix=at,
            num_prompts=prompts,
            target_examples=target,
            seed=seed,
            synthesis=self.config.synthesis,
        )

    def train_student(
        self, at: str, student: LoopModel, candidates: ArtifactRef, *, seed: int, warmup: bool = False, limit: int = 0
    ) -> trainer_pb2.TrainStudentRequest:
        """SFT of ``student`` on a candidate set: the warm-up (its settings, AdamW state kept) or the training SFT."""
        return trainer_pb2.TrainStudentRequest(
            student=student.to_proto(),
            candidates=ref_to_proto(candidates),
            output_prefix=at,
            sft=self.config.warmup if warmup else self.config.sft,
            seed=seed,
            warmup=warmup,
            limit=limit,
        )

    def score(
        self,
        at: str,
        warmed_up: ArtifactRef,
        candidates: ArtifactRef,
        *,
        influence: influence_pb2.InfluenceSettings | None = None,
    ) -> influence_pb2.ScoreRequest:
        """Influence of each candidate on the warmed-up student, against the reference set."""
        return influence_pb2.ScoreRequest(
            student=LoopModel.stored(warmed_up).to_proto(),
            reference=ref_to_proto(self.data["reference"]),
            candidates=ref_to_proto(candidates),
            output_prefix=at,
            influence=influence or self.config.influence,
        )

    def assemble(self, at: str, candidates: ArtifactRef, scores: ArtifactRef) -> preference_pb2.AssembleRequest:
        return preference_pb2.AssembleRequest(
            candidates=ref_to_proto(candidates),
            scores=ref_to_proto(scores),
            output_prefix=at,
            preference=self.config.preference,
        )

    def train_teacher(
        self, at: str, teacher: LoopModel, pairs: ArtifactRef, *, seed: int
    ) -> trainer_pb2.TrainTeacherRequest:
        return trainer_pb2.TrainTeacherRequest(
            teacher=teacher.to_proto(), pairs=ref_to_proto(pairs), output_prefix=at, dpo=self.config.dpo, seed=seed
        )

    def evaluate(self, at: str, model: LoopModel, rows: str, *, limit: int) -> influence_pb2.EvaluateRequest:
        """Per-row held-out loss of ``model`` on a data set (``rows``: "reference" or "eval")."""
        return influence_pb2.EvaluateRequest(
            model=model.to_proto(),
            rows=ref_to_proto(self.data[rows]),
            limit=limit,
            batch_size=self.config.evaluation.batch_size,
            output_prefix=at,
        )

    def checks(self, student: LoopModel, teacher: LoopModel) -> list[tuple[object, dict[str, str]]]:
        """Every setting and input of the loop as ``validate_only`` requests, each with the renames that turn the
        request's field names into the run config's (so an error names the field the user wrote)."""
        c = self.config
        teacher_fields = {**_model_fields("teacher", "models.teacher"), "synthesis": "synthesis"}
        student_fields = {
            "student.chat_template": "models.student_chat_template",
            **_model_fields("student", "models.student"),
        }
        no_data: common_pb2.ArtifactRef = common_pb2.ArtifactRef()
        return [
            (
                teacher_pb2.GenerateRequest(teacher=teacher.to_proto(), synthesis=c.synthesis, validate_only=True),
                teacher_fields,
            ),
            (
                trainer_pb2.TrainStudentRequest(
                    student=student.to_proto(), sft=c.warmup, warmup=True, validate_only=True
                ),
                {**student_fields, "sft": "warmup"},
            ),
            (
                trainer_pb2.TrainStudentRequest(student=student.to_proto(), sft=c.sft, validate_only=True),
                {**student_fields, "sft": "sft"},
            ),
            (
                trainer_pb2.TrainTeacherRequest(teacher=teacher.to_proto(), dpo=c.dpo, validate_only=True),
                {**_model_fields("teacher", "models.teacher"), "dpo": "dpo"},
            ),
            (
                preference_pb2.AssembleRequest(
                    candidates=no_data, scores=no_data, preference=c.preference, validate_only=True
                ),
                {"preference": "preference"},
            ),
            (
                influence_pb2.ScoreRequest(
                    student=student.to_proto(),
                    reference=ref_to_proto(self.data["reference"]),
                    influence=c.influence,
                    validate_only=True,
                ),
                {**student_fields, "influence": "influence", "reference": "data.reference_path"},
            ),
            (
                influence_pb2.EvaluateRequest(
                    model=student.to_proto(),
                    rows=ref_to_proto(self.data["eval"]),
                    limit=c.evaluation.max_rows or 0,
                    validate_only=True,
                ),
                {
                    "model.chat_template": "models.student_chat_template",
                    **_model_fields("model", "models.student"),
                    "rows": "data.eval_path",
                },
            ),
        ]


def _model_fields(request_field: str, config_field: str) -> dict[str, str]:
    """Renames of a ModelSpec's fields to the run-config field it was built from (a node path or a store URI)."""
    return {
        f"{request_field}{suffix}": config_field
        for suffix in ("", ".path", ".artifact", ".artifact.uri", ".artifact.sha256")
    }


def renamed(field: str | None, renames: dict[str, str]) -> str | None:
    """``field`` with its longest matching prefix in ``renames`` replaced."""
    if not field:
        return field
    for old in sorted(renames, key=len, reverse=True):
        if field == old or field.startswith(f"{old}.") or field.startswith(f"{old}["):
            return renames[old] + field[len(old) :]
    return field
