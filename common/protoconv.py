"""Proto <-> Python conversion for the montessori.v1 API, in one place."""
from __future__ import annotations

import hashlib
import time
from pathlib import Path
from typing import Any

from google.protobuf import json_format

from common.artifacts import ArtifactRef, ArtifactStore, validate_key
from common.errors import InvalidArgument
from common.jobs import JobSnapshot
from common.models import ModelRef, model_dir
from montessori.v1 import common_pb2


def ref_to_proto(ref: ArtifactRef | None) -> common_pb2.ArtifactRef | None:
    return common_pb2.ArtifactRef(uri=ref.uri, sha256=ref.sha256) if ref else None


def ref_from_proto(message: common_pb2.ArtifactRef) -> ArtifactRef:
    return ArtifactRef(uri=message.uri, sha256=message.sha256)


def job_to_proto(job: JobSnapshot) -> common_pb2.Job:
    """A job snapshot as the API's Job message."""
    message = common_pb2.Job(
        job_id=job.job_id, request_id=job.request_id, kind=job.kind, state=job.state.value,
        progress=common_pb2.Progress(stage=job.stage, done=job.done, total=job.total, eta_seconds=job.eta_seconds,
                                     metrics=job.live_metrics),
        error_code=job.error_code, error_message=job.error_message, metrics=job.metrics,
        age_seconds=max(0.0, time.time() - job.submitted_at),
    )
    for role, ref in job.outputs.items():
        message.outputs[role].CopyFrom(ref_to_proto(ref))
    if job.manifest:
        message.manifest.CopyFrom(ref_to_proto(job.manifest))
    return message


def settings_to_dict(settings: common_pb2.Settings) -> dict[str, Any]:
    """The free-form settings of a request as a plain dict (validated later by a config dataclass)."""
    return json_format.MessageToDict(settings.values) if settings.HasField("values") else {}


def dict_to_settings(values: dict[str, Any]) -> common_pb2.Settings:
    settings = common_pb2.Settings()
    settings.values.update(values)
    return settings


def fingerprint(request) -> str:
    """Digest of a request, so a reused request_id with a different request is caught."""
    return hashlib.sha256(request.SerializeToString(deterministic=True)).hexdigest()


def required(value: str, field: str) -> str:
    if not value or not value.strip():
        raise InvalidArgument("is required", field=field)
    return value


def local_artifact(store: ArtifactStore, uri: str, *, field: str) -> Path:
    """The local path of an artifact named by URI: INVALID_ARGUMENT outside the store, NOT_FOUND if absent."""
    required(uri, field)
    try:
        key = store.key_of(uri)
    except InvalidArgument as err:
        raise InvalidArgument(err.message, field=field) from None
    path = store.local_path(key) if store.exists(key) else None
    if path is None:
        from common.errors import NotFound

        raise NotFound(f"no artifact at {uri}", field=field)
    return path


def output_prefix(value: str, *, field: str = "output_prefix") -> str:
    return validate_key(required(value, field), field=field)


def model_from_proto(spec: common_pb2.ModelSpec, store: ArtifactStore, *, field: str) -> ModelRef:
    """A ModelSpec as a ModelRef of local folders (base path on this node, or a model in the store), with its
    chat template when the request sets one (checked against the tokenizer when it is loaded)."""
    if bool(spec.path) == bool(spec.uri):
        raise InvalidArgument("set exactly one of path and uri", field=field)
    chat_template = spec.chat_template if spec.HasField("chat_template") else None
    if chat_template is not None and not chat_template.strip():
        raise InvalidArgument("must be a non-empty Jinja template when set", field=f"{field}.chat_template")
    base = str(model_dir(spec.path, field=f"{field}.path")) if spec.path else \
        str(model_dir(local_artifact(store, spec.uri, field=f"{field}.uri"), field=f"{field}.uri"))
    adapters = tuple(str(local_artifact(store, uri, field=f"{field}.adapter_uris[{i}]"))
                     for i, uri in enumerate(spec.adapter_uris))
    return ModelRef(base, adapters, chat_template)


def count(value: int, *, field: str, maximum: int, allow_zero: bool = True) -> int:
    """A non-negative, bounded count from a request."""
    if value < 0 or value > maximum or (value == 0 and not allow_zero):
        low = 0 if allow_zero else 1
        raise InvalidArgument(f"must be in {low}..{maximum}, got {value}", field=field)
    return value
