"""Proto <-> Python conversion for the montessori.v1 API (refs, jobs, loop specs, fingerprints); how a worker reads
a stage request's fields is ``common/request_fields.py``."""

from __future__ import annotations

import hashlib
import time

from common.artifacts import ArtifactRef
from common.config import message_from_dict
from common.jobs import JobSnapshot
from montessori.v1 import common_pb2, controller_pb2


def ref_to_proto(ref: ArtifactRef | None) -> common_pb2.ArtifactRef | None:
    return common_pb2.ArtifactRef(uri=ref.uri, sha256=ref.sha256) if ref else None


def ref_from_proto(message: common_pb2.ArtifactRef) -> ArtifactRef:
    return ArtifactRef(uri=message.uri, sha256=message.sha256)


def job_to_proto(job: JobSnapshot) -> common_pb2.Job:
    """A job snapshot as the API's Job message."""
    message = common_pb2.Job(
        job_id=job.job_id,
        request_id=job.request_id,
        kind=job.kind,
        state=job.state.value,
        progress=common_pb2.Progress(
            stage=job.stage, done=job.done, total=job.total, eta_seconds=job.eta_seconds, metrics=job.live_metrics
        ),
        error_code=job.error_code,
        error_message=job.error_message,
        metrics=job.metrics,
        age_seconds=max(0.0, time.time() - job.submitted_at),
    )
    for role, ref in job.outputs.items():
        message.outputs[role].CopyFrom(ref_to_proto(ref))
    if job.manifest:
        message.manifest.CopyFrom(ref_to_proto(job.manifest))
    return message


def loop_spec(document: dict) -> controller_pb2.LoopSpec:
    """A run-config document (a YAML config merged with ``--set`` overrides) as a typed LoopSpec; unknown fields
    and wrong types are errors naming the field."""
    return controller_pb2.LoopSpec(config=message_from_dict(controller_pb2.RunConfig, document))


def fingerprint(request) -> str:
    """Digest of a request, so a reused request_id with a different request is caught."""
    return hashlib.sha256(request.SerializeToString(deterministic=True)).hexdigest()


def content_fingerprint(request) -> str:
    """Digest of what a stage request asks for: its fingerprint without ``request_id`` and ``validate_only``, so
    the same work sent again is recognised by its content, not by the id it carries (write-once outputs,
    checkpoints)."""
    content = type(request)()
    content.CopyFrom(request)
    for name in ("request_id", "validate_only"):
        if name in content.DESCRIPTOR.fields_by_name:
            content.ClearField(name)
    return fingerprint(content)
