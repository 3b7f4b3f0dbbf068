"""How a worker reads the fields of a stage request: required strings, artifact refs (checked against the
store and their pinned digests), output prefixes, model specs, bounded counts and typed settings."""

from __future__ import annotations

from pathlib import Path
from typing import TypeVar

from google.protobuf.message import Message

from common.artifacts import ArtifactStore, validate_key
from common.config import from_dict, message_to_dict
from common.errors import FailedPrecondition, InvalidArgument, NotFound
from common.models import ModelRef, model_dir
from montessori.v1 import common_pb2

T = TypeVar("T")


def required(value: str, field: str) -> str:
    if not value or not value.strip():
        raise InvalidArgument("is required", field=field)
    return value


def settings(message: Message, cls: type[T], *, field: str) -> T:
    """A stage's typed settings message resolved into its worker's config dataclass: the fields that are set
    override the dataclass defaults, which then validates itself (errors name ``<field>.<name>``)."""
    return from_dict(cls, message_to_dict(message), path=field)


def local_artifact(store: ArtifactStore, ref: common_pb2.ArtifactRef, *, field: str) -> Path:
    """The local path of an artifact named in a request: INVALID_ARGUMENT outside the store, NOT_FOUND if absent,
    FAILED_PRECONDITION when the request pins a digest the artifact no longer has."""
    uri = required(ref.uri, f"{field}.uri")
    try:
        key = store.key_of(uri)
    except InvalidArgument as err:
        raise InvalidArgument(err.message, field=f"{field}.uri") from None
    if not store.exists(key):
        raise NotFound(f"no artifact at {uri}", field=f"{field}.uri")
    if ref.sha256 and store.digest(key) != ref.sha256:
        raise FailedPrecondition(
            f"{uri} changed since the request was made (sha256 {ref.sha256[:12]}...)", field=f"{field}.sha256"
        )
    return store.local_path(key)


#: Names a stage's outputs may not take: a loop's own records (an output there would shadow them).
RESERVED_NAMES = frozenset(
    {"state.json", "summary.json", "config.json", "rounds.jsonl", "manifest.json", "request.json", "inputs"}
)


def output_prefix(value: str, *, field: str = "output_prefix") -> str:
    """Where a stage publishes: a valid store key, with no hidden segment (``.x``: unlisted, never collected by
    gc) and no reserved name, and not a loop's own folder (``loops/<id>``, where its records are)."""
    key = validate_key(required(value, field), field=field)
    segments = key.split("/")
    if any(segment.startswith(".") for segment in segments):
        raise InvalidArgument("must not have a hidden segment (one starting with '.')", field=field)
    if any(segment in RESERVED_NAMES for segment in segments):
        raise InvalidArgument(f"must not use a reserved name ({', '.join(sorted(RESERVED_NAMES))})", field=field)
    if len(segments) <= 2 and segments[0] == "loops":
        raise InvalidArgument(
            "must be a stage folder inside a loop (loops/<id>/<stage>), not a loop itself", field=field
        )
    return key


def model_from_proto(
    spec: common_pb2.ModelSpec, store: ArtifactStore, *, field: str, roots: tuple[Path, ...] | None = None
) -> ModelRef:
    """A ModelSpec as a ModelRef of local folders (base path on this node, or a model in the store), with its
    chat template when the request sets one (checked against the tokenizer when it is loaded). With ``roots`` (a
    service's models directories), a node path outside them is INVALID_ARGUMENT before anything is read there:
    a client cannot load, or probe for, any other folder of the node."""
    if bool(spec.path) == spec.HasField("artifact"):
        raise InvalidArgument("set exactly one of path and artifact", field=field)
    if (
        spec.path
        and roots is not None
        and not any(Path(spec.path).resolve().is_relative_to(r.resolve()) for r in roots)
    ):
        raise InvalidArgument(
            f"must be a model folder inside {', '.join(str(r) for r in roots)} (the service's models directory); "
            "other models come from the store (artifact)",
            field=f"{field}.path",
        )
    chat_template = spec.chat_template if spec.HasField("chat_template") else None
    if chat_template is not None and not chat_template.strip():
        raise InvalidArgument("must be a non-empty Jinja template when set", field=f"{field}.chat_template")
    base = (
        str(model_dir(spec.path, field=f"{field}.path"))
        if spec.path
        else str(model_dir(local_artifact(store, spec.artifact, field=f"{field}.artifact"), field=f"{field}.artifact"))
    )
    adapters = tuple(
        str(local_artifact(store, ref, field=f"{field}.adapters[{i}]")) for i, ref in enumerate(spec.adapters)
    )
    return ModelRef(base, adapters, chat_template)


def count(value: int, *, field: str, maximum: int, allow_zero: bool = True) -> int:
    """A non-negative, bounded count from a request."""
    if value < 0 or value > maximum or (value == 0 and not allow_zero):
        low = 0 if allow_zero else 1
        raise InvalidArgument(f"must be in {low}..{maximum}, got {value}", field=field)
    return value


#: Largest stage seed: trainers seed numpy, whose seeds end at 2**32 - 1.
MAX_STAGE_SEED = 2**32 - 1


def seed(value: int, *, field: str = "seed") -> int:
    """A stage's seed: 0..2**32-1 (INVALID_ARGUMENT otherwise, not a ValueError deep in a trainer)."""
    return count(value, field=field, maximum=MAX_STAGE_SEED)


def service_model_roots() -> tuple[Path, ...]:
    """The folders a service loads node-local models from: ``MONTESSORI_MODELS_DIR``, plus any listed in
    ``MONTESSORI_MODEL_ROOTS`` (separated by ``os.pathsep``)."""
    import os

    from common.envs import Env

    extra = [Path(p) for p in os.environ.get("MONTESSORI_MODEL_ROOTS", "").split(os.pathsep) if p]
    return (Path(Env.read().models_dir), *extra)
