"""The single-stage commands (``montessori generate``, ``train-student``, ``score``, ``pairs``, ``train-teacher``,
``evaluate``): each builds its stage's request message from the flags and the run config, and runs it with
``LocalExecutor`` through the same stage function (from the stage registry) and the same checks as a worker
service: seed range, output prefix, model roots, settings, inputs.

Files and folders on disk become artifacts of one local store, rooted at the folder that holds them all, and
``--out`` its output prefix. The run config's models are node paths, so they must lie in the models directory
(``MONTESSORI_MODELS_DIR`` or ``MONTESSORI_MODEL_ROOTS``) as on a service; a model folder given by a flag (a trained
student, a warmed-up one, an adapter) is an artifact of the store unless it lies there too. An error names the
flag or config field the user wrote.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

from common.artifacts import LocalArtifactStore
from common.errors import MontessoriError
from common.progress import Progress
from common.request_fields import service_model_roots
from common.stage_results import EvaluateMetrics
from montessori.v1 import common_pb2, influence_pb2, preference_pb2, teacher_pb2, trainer_pb2
from services.controller.config import RunConfig
from services.controller.requests import renamed

COMMANDS = ("generate", "train-student", "score", "pairs", "train-teacher", "evaluate")


class _Files:
    """The command's files and folders as artifacts of one local store rooted at their common folder."""

    def __init__(self, paths: list[str]):
        resolved = [Path(p).resolve() for p in paths]
        self.store = LocalArtifactStore(Path(os.path.commonpath(resolved)))
        self.roots = service_model_roots()

    def ref(self, path: str) -> common_pb2.ArtifactRef:
        return common_pb2.ArtifactRef(uri=Path(path).resolve().as_uri())

    def prefix(self, out: str) -> str:
        return Path(out).resolve().relative_to(self.store.root).as_posix()

    def model(
        self, folder: str, *, flag: str = "", adapters: list[str] = (), chat_template: str | None = None
    ) -> common_pb2.ModelSpec:
        """A model folder: a node path (checked against the models directory) when it is the run config's (no
        ``flag``) or lies in that directory, else an artifact of the store (errors name ``flag``)."""
        from common.models import model_dir

        spec = common_pb2.ModelSpec(adapters=[self.ref(a) for a in adapters], chat_template=chat_template)
        if flag and not any(Path(folder).resolve().is_relative_to(r.resolve()) for r in self.roots):
            spec.artifact.CopyFrom(self.ref(str(model_dir(folder, field=flag))))
        else:
            spec.path = folder
        return spec


def _paths(args: argparse.Namespace, config: RunConfig) -> list[str]:
    """Every file or folder the command reads or writes (the store's root holds them all)."""
    data, command = config.data, args.command
    if command == "generate":
        paths = [data.seed_path, *args.adapter]
    elif command == "train-student":
        paths = [args.candidates, *([args.student] if args.student else [])]
    elif command == "score":
        paths = [args.warmup, args.candidates, data.reference_path]
    elif command == "pairs":
        paths = [args.candidates, args.scores]
    elif command == "train-teacher":
        paths = [args.pairs, *args.adapter]
    else:
        paths = [data.eval_path, *args.student]
    return [*paths, *([str(Path(args.out).resolve().parent)] if getattr(args, "out", None) else [])]


#: Request fields -> the flags and config fields a user writes (an error names what the user wrote).
RENAMES = {
    "output_prefix": "--out",
    **{
        f"{request_field}{suffix}": name
        for request_field, name in {
            "candidates": "--candidates",
            "scores": "--scores",
            "pairs": "--pairs",
            "seed_set": "data.seed_path",
            "reference": "data.reference_path",
            "rows": "data.eval_path",
        }.items()
        for suffix in ("", ".uri", ".sha256")
    },
    "teacher.adapters": "--adapter",
    "teacher": "models.teacher",
    "synthesis": "synthesis",
    "influence": "influence",
    "preference": "preference",
    "dpo": "dpo",
    "seed": "seed",
}


def requests(args: argparse.Namespace, config: RunConfig, files: _Files) -> list:
    """The command's stage request(s): one per stage run (``evaluate``: one per ``--student``)."""
    models, seed = config.models, config.seed
    template = models.student_chat_template
    if args.command == "generate":
        return [
            teacher_pb2.GenerateRequest(
                teacher=files.model(models.teacher, adapters=args.adapter),
                teacher_label=f"teacher-r{len(args.adapter)}",
                seed_set=files.ref(config.data.seed_path),
                output_prefix=files.prefix(args.out),
                num_prompts=args.prompts or 0,
                target_examples=args.examples or 0,
                seed=seed,
                synthesis=config.synthesis,
            )
        ]
    if args.command == "train-student":
        return [
            trainer_pb2.TrainStudentRequest(
                student=files.model(
                    args.student or models.student, flag="--student" if args.student else "", chat_template=template
                ),
                candidates=files.ref(args.candidates),
                output_prefix=files.prefix(args.out),
                sft=config.warmup if args.warmup else config.sft,
                seed=seed,
                warmup=args.warmup,
            )
        ]
    if args.command == "score":
        return [
            influence_pb2.ScoreRequest(
                student=files.model(args.warmup, flag="--warmup"),
                reference=files.ref(config.data.reference_path),
                candidates=files.ref(args.candidates),
                output_prefix=files.prefix(args.out),
                influence=config.influence,
            )
        ]
    if args.command == "pairs":
        return [
            preference_pb2.AssembleRequest(
                candidates=files.ref(args.candidates),
                scores=files.ref(args.scores),
                output_prefix=files.prefix(args.out),
                preference=config.preference,
            )
        ]
    if args.command == "train-teacher":
        return [
            trainer_pb2.TrainTeacherRequest(
                teacher=files.model(models.teacher, adapters=args.adapter),
                pairs=files.ref(args.pairs),
                output_prefix=files.prefix(args.out),
                dpo=config.dpo,
                seed=seed,
            )
        ]
    return [
        influence_pb2.EvaluateRequest(
            model=files.model(student, flag="--student", chat_template=template),
            rows=files.ref(config.data.eval_path),
            batch_size=config.evaluation.batch_size,
        )
        for student in args.student
    ]


def run(args: argparse.Namespace, config: RunConfig, progress: Progress) -> int:
    """Run the command's stage(s) in process and print the result as JSON."""
    from cli.local import LocalExecutor

    files = _Files(_paths(args, config))
    student_flag = {"score": "--warmup", "evaluate": "--student"}.get(args.command)
    if args.command == "train-student":
        student_flag = "--student" if args.student else "models.student"
    renames = {**RENAMES, **({"student": student_flag, "model": student_flag} if student_flag else {})}
    executor = LocalExecutor(files.store, dtype=config.models.dtype, model_roots=files.roots)
    try:
        results = [executor.run(request, progress) for request in requests(args, config, files)]
    except MontessoriError as err:
        raise type(err)(err.message, field=renamed(err.field, renames)) from None
    if args.command == "evaluate":
        # Evaluate without an output prefix publishes nothing: its work returns the mean loss as its metrics.
        losses = {
            student: EvaluateMetrics.from_metrics(metrics).loss
            for student, metrics in zip(args.student, results, strict=True)
        }
        print(json.dumps({"eval_path": config.data.eval_path, "eval_loss": losses}, indent=2))
        return 0
    (result,) = results
    print(
        json.dumps(
            {
                "stage": result.stage,
                "outputs": {k: v.to_dict() for k, v in result.outputs.items()},
                "manifest": result.manifest.uri,
                "metrics": result.metrics,
            },
            indent=2,
            default=str,
        )
    )
    return 0
