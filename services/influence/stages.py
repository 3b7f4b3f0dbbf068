"""The influence service's stage requests, validated into units of work (the servicer submits them as jobs;
the in-process runner calls them directly): one function per request message."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path

import torch

from common.artifacts import ArtifactStore
from common.device import resolve_device
from common.errors import InvalidArgument
from common.manifests import StageResult
from common.progress import Progress, one_step
from common.protoconv import content_fingerprint
from common.request_fields import count, local_artifact, model_from_proto, output_prefix, settings
from common.stage_results import EvaluateMetrics
from montessori.v1 import influence_pb2
from services.influence import tasks
from services.influence.config import InfluenceConfig

Work = Callable[[Progress], StageResult]
#: Rows per forward pass of Evaluate when the request leaves batch_size 0.
DEFAULT_EVAL_BATCH = 16
#: Token cap of one evaluated example (the model's context window, if shorter, wins).
EVAL_MAX_LENGTH = 512


def score(
    store: ArtifactStore,
    request: influence_pb2.ScoreRequest,
    *,
    model_roots: tuple[Path, ...] | None = None,
    device: torch.device | None = None,
) -> Work | None:
    """Influence of the candidates on the warmed-up student. Validation alone tokenises the reference rows
    with the student's tokenizer (the base student's, before any warm-up exists). ``device``: the service's own
    (``--device``), where a request whose ``influence.device`` is ``auto`` is scored."""
    config = settings(request.influence, InfluenceConfig, field="influence")
    if device is not None and config.device == "auto":
        config = dataclasses.replace(config, device=str(device))
    shard = _shard(request) if request.HasField("shard") else None
    student = model_from_proto(request.student, store, field="student", roots=model_roots)
    reference = local_artifact(store, request.reference, field="reference")
    if request.validate_only:
        tasks.check_rows(
            student,
            reference,
            max_length=config.max_length,
            limit=config.reference_size,
            model_field="student",
            rows_field="reference",
            source=request.reference.uri,
        )
        return None
    if student.adapters:
        raise InvalidArgument("must be a warmed-up student folder, without adapters", field="student.adapters")
    candidates = local_artifact(store, request.candidates, field="candidates")
    prefix = output_prefix(request.output_prefix)
    work = content_fingerprint(request)  # a job re-sent after a preemption resumes this request's checkpoint
    return lambda progress: tasks.score(
        store,
        prefix,
        warmup_dir=Path(student.path),
        reference_path=reference,
        candidates_path=candidates,
        config=config,
        shard=shard,
        progress=progress,
        request_digest=work,
    )


def merge_scores(
    store: ArtifactStore, request: influence_pb2.MergeScoresRequest, *, model_roots: tuple[Path, ...] | None = None
) -> Work | None:
    """One scores file from the shards of a sharded Score."""
    config = settings(request.influence, InfluenceConfig, field="influence")
    if not request.shards:
        raise InvalidArgument("needs at least one shard manifest", field="shards")
    candidates = local_artifact(store, request.candidates, field="candidates")
    manifests = []
    for i, ref in enumerate(request.shards):
        path = local_artifact(store, ref, field=f"shards[{i}]")
        try:
            manifest = store.get_json(store.key_of(ref.uri))
        except ValueError:  # not JSON (or not UTF-8): any file of the store can be named here
            manifest = None
        if (
            not isinstance(manifest, dict)
            or manifest.get("stage") != "score"
            or not isinstance(manifest.get("outputs"), dict)
            or "scores" not in manifest["outputs"]
        ):
            raise InvalidArgument(f"{path} is not the manifest of a Score job", field=f"shards[{i}]")
        manifests.append({**manifest, "ref": {"uri": ref.uri, "sha256": store.digest(store.key_of(ref.uri))}})
    prefix = output_prefix(request.output_prefix)
    return one_step(
        "merge",
        lambda: tasks.merge_scores(store, prefix, candidates_path=candidates, shard_manifests=manifests, config=config),
    )


def evaluate(
    store: ArtifactStore,
    request: influence_pb2.EvaluateRequest,
    *,
    model_roots: tuple[Path, ...] | None = None,
    device: str | torch.device = "auto",
) -> Work | None:
    """Held-out loss of a model per row (with ``output_prefix``), or only its mean. Validation alone tokenises
    the rows with the model's tokenizer. ``device``: the service's own (``montessori serve influence --device``;
    the request has no settings message), checked here: FAILED_PRECONDITION naming ``device`` when it is absent."""
    device = device if isinstance(device, torch.device) else resolve_device(device, field="device")
    model = model_from_proto(request.model, store, field="model", roots=model_roots)
    rows = local_artifact(store, request.rows, field="rows")
    limit = count(request.limit, field="limit", maximum=10_000_000)
    batch_size = count(request.batch_size, field="batch_size", maximum=1024) or DEFAULT_EVAL_BATCH
    if request.validate_only:
        tasks.check_rows(
            model,
            rows,
            max_length=EVAL_MAX_LENGTH,
            limit=limit or None,
            model_field="model",
            rows_field="rows",
            source=request.rows.uri,
        )
        return None
    if not request.output_prefix:  # only the mean, as the job's metric
        return one_step(
            "evaluate",
            lambda: EvaluateMetrics(
                loss=tasks.evaluation_loss(
                    model,
                    rows,
                    batch_size=batch_size,
                    max_length=EVAL_MAX_LENGTH,
                    limit=limit or None,
                    field="model",
                    device=device,
                )
            ).to_metrics(),
        )
    prefix = output_prefix(request.output_prefix)
    return lambda progress: tasks.evaluate(
        store,
        prefix,
        model=model,
        rows_path=rows,
        batch_size=batch_size,
        max_length=EVAL_MAX_LENGTH,
        limit=limit or None,
        field="model",
        progress=progress,
        device=device,
    )


def _shard(request: influence_pb2.ScoreRequest) -> tuple[int, int]:
    index, total = request.shard.index, count(request.shard.count, field="shard.count", maximum=1024, allow_zero=False)
    if not 0 <= index < total:
        raise InvalidArgument(f"must be in 0..{total - 1}, got {index}", field="shard.index")
    return index, total
