"""How a service reads the fields of a request: locations (every path- or URI-like string field, checked at the
gRPC edge of every service by ``check_locations``), required strings, artifact refs (checked against the store and
their pinned digests), output prefixes, model specs, bounded counts and typed settings."""

from __future__ import annotations

import re
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import Message

from common.artifacts import ArtifactStore, validate_key
from common.config import from_dict, message_to_dict
from common.errors import FailedPrecondition, InvalidArgument, NotFound
from montessori.v1 import common_pb2

if TYPE_CHECKING:  # common.models loads torch; the gRPC edge (the controller's too) imports this module
    from common.models import ModelRef

T = TypeVar("T")

#: Longest path or URI a request may carry (Linux's PATH_MAX); store keys have a lower limit of their own.
MAX_LOCATION_CHARS = 4096
#: Control characters (C0, DEL, C1): NUL makes ``Path.resolve()`` and ``open()`` raise ValueError, and a newline in
#: a path or key forges log lines; no file, folder, store key or URI this project names has one.
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")
#: String fields that hold a location (a file or folder path, a store key or prefix, a URI), by name, in every
#: request message of every service: ``ModelSpec.path``, ``ArtifactRef.uri``, ``output_prefix``, the loop's
#: ``artifacts`` store, its ``models.teacher`` / ``models.student`` and ``data.*_path``. A field added later whose
#: name ends in one of the suffixes is checked without a change here.
LOCATION_FIELDS = frozenset({"path", "uri", "output_prefix", "artifacts", "teacher", "student"})
LOCATION_SUFFIXES = ("_path", "_uri", "_prefix", "_dir")


def location(value: str, *, field: str) -> str:
    """A path- or URI-like request field as it may reach the file system or the store: at most
    MAX_LOCATION_CHARS characters and no control character (INVALID_ARGUMENT naming ``field``, not a ValueError
    from ``Path.resolve()`` deep in a stage)."""
    if len(value) > MAX_LOCATION_CHARS:
        raise InvalidArgument(f"must be at most {MAX_LOCATION_CHARS} characters, got {len(value)}", field=field)
    control = _CONTROL.search(value)
    if control:
        raise InvalidArgument(
            f"must not contain control characters (found {control.group()!r} at {control.start()})", field=field
        )
    return value


def is_location_field(field: FieldDescriptor) -> bool:
    """Whether a string field of a request names a location (see LOCATION_FIELDS)."""
    return field.type == FieldDescriptor.TYPE_STRING and (
        field.name in LOCATION_FIELDS or field.name.endswith(LOCATION_SUFFIXES)
    )


def check_locations(message: Message, *, prefix: str = "") -> Message:
    """Every location field of ``message``, nested messages and repeated fields included, checked with
    ``location`` (the error names the field's path, e.g. ``spec.config.data.seed_path``); returns ``message``.
    Every service's error interceptor runs it on each request before the handler, so no path or URI with a NUL
    reaches a handler of any service."""
    for field, value in message.ListFields():
        name = f"{prefix}{field.name}"
        if field.message_type is not None:
            if field.message_type.GetOptions().map_entry:
                if field.message_type.fields_by_name["value"].message_type is not None:
                    for key, item in value.items():
                        check_locations(item, prefix=f"{name}[{key!r}].")
            elif field.is_repeated:
                for index, item in enumerate(value):
                    check_locations(item, prefix=f"{name}[{index}].")
            else:
                check_locations(value, prefix=f"{name}.")
        elif is_location_field(field):
            if field.is_repeated:
                for index, item in enumerate(value):
                    location(item, field=f"{name}[{index}]")
            else:
                location(value, field=name)
    return message


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
    uri = location(required(ref.uri, f"{field}.uri"), field=f"{field}.uri")
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
    key = validate_key(location(required(value, field), field=field), field=field)
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
    from common.models import ModelRef, model_dir

    if bool(spec.path) == spec.HasField("artifact"):
        raise InvalidArgument("set exactly one of path and artifact", field=field)
    location(spec.path, field=f"{field}.path")
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
    from common.envs import Env

    env = Env.read()
    return (Path(env.models_dir), *(Path(p) for p in env.model_roots))
