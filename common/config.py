"""Typed config loading: defaults -> YAML/TOML file -> ``--set`` overrides.

Config classes are plain dataclasses whose fields carry ``metadata={"help": ...}``
and validate themselves in ``__post_init__`` by raising :class:`InvalidArgument`
with the field name. This module turns nested mappings into those dataclasses,
rejecting unknown keys and wrong types with the full dotted field path.

A section may also be a protobuf message (a stage's settings, as the stage request carries
them): it holds only the fields that are set, and the worker that runs the stage resolves the
rest from its own config dataclass. :func:`message_from_dict` / :func:`message_to_dict` convert.
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
import tomllib
import types
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal, TypeVar

import yaml
from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import Message

from common.errors import InvalidArgument, MontessoriError, NotFound

T = TypeVar("T")


def field(default: Any = dataclasses.MISSING, *, help: str, default_factory: Any = dataclasses.MISSING):
    """A dataclass field with a mandatory help string (shown by ``montessori config``)."""
    if default_factory is not dataclasses.MISSING:
        return dataclasses.field(default_factory=default_factory, metadata={"help": help})
    return dataclasses.field(default=default, metadata={"help": help})


def check(condition: bool, field_name: str, message: str) -> None:
    """Raise :class:`InvalidArgument` for ``field_name`` unless ``condition`` holds."""
    if not condition:
        raise InvalidArgument(message, field=field_name)


def from_dict(cls: type[T], data: Mapping[str, Any], *, path: str = "") -> T:
    """Build dataclass ``cls`` from ``data``; unknown keys and wrong types are errors."""
    if not isinstance(data, Mapping):
        raise InvalidArgument(f"expected a mapping, got {type(data).__name__}", field=path or None)
    hints = typing.get_type_hints(cls)
    known = {f.name for f in dataclasses.fields(cls) if f.init}
    for key in data:
        if key not in known:
            raise InvalidArgument(f"unknown field (known: {', '.join(sorted(known))})", field=_join(path, str(key)))
    kwargs = {key: _coerce(hints[key], value, _join(path, key)) for key, value in data.items()}
    try:
        return cls(**kwargs)
    except MontessoriError as err:
        raise (err.with_prefix(path) if path else err) from None


def to_dict(obj: Any) -> Any:
    """Plain JSON-able view of a config dataclass (for manifests and ``summary.json``)."""
    if isinstance(obj, Message):
        return message_to_dict(obj)
    if dataclasses.is_dataclass(obj):
        return {f.name: to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, dict):
        return {k: to_dict(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_dict(v) for v in obj]
    return obj


def merge(base: dict, override: Mapping) -> dict:
    """Recursive dict merge: ``override`` wins, nested mappings are merged key by key."""
    out = dict(base)
    for key, value in override.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = merge(out[key], value)
        else:
            out[key] = value
    return out


def read_config_file(path: str | Path) -> dict:
    """Parse a YAML (``.yaml``/``.yml``) or TOML (``.toml``) config file into a dict."""
    path = Path(path)
    if not path.is_file():
        raise NotFound(f"config file {path} does not exist", field="--config")
    text = path.read_text()
    try:
        data = tomllib.loads(text) if path.suffix == ".toml" else yaml.safe_load(text)
    except (yaml.YAMLError, tomllib.TOMLDecodeError) as err:
        raise InvalidArgument(f"{syntax_error_location(path, err)}: {syntax_error_text(path, err)}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise InvalidArgument(f"{path} must hold a mapping at the top level", field="--config")
    return data


def syntax_error_location(path: Path, err: Exception) -> str:
    """``file:line:column`` (1-based) of a YAML or TOML syntax error, as compilers and editors show it."""
    mark = getattr(err, "problem_mark", None) or getattr(err, "context_mark", None)
    if mark is not None:
        return f"{path}:{mark.line + 1}:{mark.column + 1}"
    where = re.search(r"\(at line (\d+), column (\d+)\)", str(err))  # tomllib's message (3.11 has no attributes)
    return f"{path}:{where.group(1)}:{where.group(2)}" if where else str(path)


def syntax_error_text(path: Path, err: Exception) -> str:
    """The parser's own words for a syntax error, on one line, without the position already in the location."""
    kind = "TOML" if path.suffix == ".toml" else "YAML"
    problem = getattr(err, "problem", None) or re.sub(r"\s*\(at line \d+, column \d+\)", "", str(err))
    return f"not valid {kind}: {' '.join(str(problem).split())}"


def parse_overrides(items: list[str]) -> dict:
    """``["a.b=3", "c=x"]`` -> ``{"a": {"b": 3}, "c": "x"}``; values are parsed as YAML scalars."""
    out: dict = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise InvalidArgument(f"expected KEY=VALUE, got {item!r}", field="--set")
        node = out
        *parents, leaf = key.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = yaml.safe_load(raw) if raw else ""
    return out


def load_config(cls: type[T], path: str | Path | None = None, overrides: list[str] | None = None) -> T:
    """Defaults, then the file at ``path``, then ``--set`` overrides, validated into ``cls``."""
    data: dict = read_config_file(path) if path else {}
    data = merge(data, parse_overrides(overrides or []))
    return from_dict(cls, data)


def config_digest(obj: Any) -> str:
    """Stable SHA-256 of a config (used in manifests to tell whether a stage can be reused)."""
    import hashlib

    blob = json.dumps(to_dict(obj), sort_keys=True, separators=(",", ":")).encode()
    return hashlib.sha256(blob).hexdigest()


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


_INTEGER_RANGES = {
    FieldDescriptor.CPPTYPE_INT32: (-(2**31), 2**31 - 1),
    FieldDescriptor.CPPTYPE_INT64: (-(2**63), 2**63 - 1),
    FieldDescriptor.CPPTYPE_UINT32: (0, 2**32 - 1),
    FieldDescriptor.CPPTYPE_UINT64: (0, 2**64 - 1),
}


def message_from_dict(cls: type[Message], data: Mapping[str, Any] | None, *, path: str = "") -> Message:
    """A protobuf message holding exactly the keys of ``data`` (``None`` values stay unset); unknown keys and
    wrong types are errors naming the dotted path, as for dataclasses."""
    message = cls()
    if data is None:
        return message
    if not isinstance(data, Mapping):
        raise InvalidArgument(f"expected a mapping, got {type(data).__name__}", field=path or None)
    fields = cls.DESCRIPTOR.fields_by_name
    for key, value in data.items():
        where = _join(path, str(key))
        if key not in fields:
            raise InvalidArgument(f"unknown field (known: {', '.join(sorted(fields))})", field=where)
        descriptor = fields[key]
        if value is None:
            continue
        if descriptor.message_type is not None:
            getattr(message, key).CopyFrom(message_from_dict(type(getattr(message, key)), value, path=where))
        else:
            setattr(message, key, _scalar(descriptor, value, where))
    return message


def message_to_dict(message: Message) -> dict[str, Any]:
    """The fields of ``message`` that are set, as plain values (nested messages as dicts)."""
    return {
        descriptor.name: message_to_dict(value) if isinstance(value, Message) else value
        for descriptor, value in message.ListFields()
    }


def _scalar(descriptor: FieldDescriptor, value: Any, path: str) -> Any:
    cpp = descriptor.cpp_type
    if cpp == FieldDescriptor.CPPTYPE_BOOL:
        return _coerce(bool, value, path)
    if cpp == FieldDescriptor.CPPTYPE_STRING:
        return _coerce(str, value, path)
    if cpp in (FieldDescriptor.CPPTYPE_DOUBLE, FieldDescriptor.CPPTYPE_FLOAT):
        return _coerce(float, value, path)
    if cpp in _INTEGER_RANGES:
        value = _coerce(int, value, path)
        low, high = _INTEGER_RANGES[cpp]
        if not low <= value <= high:
            raise InvalidArgument(f"must be in {low}..{high}, got {value}", field=path)
        return value
    raise TypeError(f"unsupported message field type at {path}")


def _coerce(tp: Any, value: Any, path: str) -> Any:
    origin = typing.get_origin(tp)
    if isinstance(tp, type) and issubclass(tp, Message):
        return value if isinstance(value, tp) else message_from_dict(tp, value, path=path)
    if dataclasses.is_dataclass(tp):
        return from_dict(tp, value if value is not None else {}, path=path)
    if origin in (typing.Union, types.UnionType):
        options = typing.get_args(tp)
        if value is None and type(None) in options:
            return None
        errors = []
        for option in options:
            if option is type(None):
                continue
            try:
                return _coerce(option, value, path)
            except InvalidArgument as err:
                errors.append(err.message)
        raise InvalidArgument("; ".join(errors), field=path)
    if origin is Literal:
        choices = typing.get_args(tp)
        if value not in choices:
            raise InvalidArgument(f"must be one of {', '.join(map(repr, choices))}, got {value!r}", field=path)
        return value
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise InvalidArgument(f"expected a list, got {type(value).__name__}", field=path)
        (item_type, *_) = typing.get_args(tp) or (Any,)
        items = [_coerce(item_type, v, f"{path}[{i}]") for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if tp is bool:
        if not isinstance(value, bool):
            raise InvalidArgument(f"expected true or false, got {value!r}", field=path)
        return value
    if tp is int:
        if isinstance(value, float) and value.is_integer():
            value = int(value)  # JSON/protobuf Struct numbers are doubles
        if isinstance(value, bool) or not isinstance(value, int):
            raise InvalidArgument(f"expected an integer, got {value!r}", field=path)
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise InvalidArgument(f"expected a number, got {value!r}", field=path)
        if not math.isfinite(value):
            raise InvalidArgument(f"must be a finite number, got {value!r}", field=path)
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise InvalidArgument(f"expected a string, got {value!r}", field=path)
        return value
    if tp is Any:
        return value
    raise TypeError(f"unsupported config type {tp!r} at {path}")
