"""A stage setting's rule as the proto declares it (``montessori.v1.SettingRule``: default, accepted interval or
values), turned into a dataclass field and checked.

The settings dataclasses are generated from the proto (``montessori/v1/settings.py``, ``make protos``) with
:func:`setting` fields and :func:`check_rules` in their ``__post_init__``; each service's config subclasses its
class with the rules that relate two fields. So adding a setting is one proto field with its comment and rule.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

from common.config import check


@dataclass(frozen=True)
class Interval:
    """An interval written in interval notation, ``[1, 4096]``, ``(0, 1]``, ``[0, inf)``; bounds keep their text."""

    low: str
    high: str
    low_open: bool
    high_open: bool

    @classmethod
    def parse(cls, text: str) -> Interval:
        body = text.strip()
        if len(body) < 5 or body[0] not in "[(" or body[-1] not in "])" or "," not in body:
            raise ValueError(f"not an interval: {text!r} (expected e.g. '[1, 4096]' or '(0, 1]')")
        low, high = (part.strip() for part in body[1:-1].split(","))
        float(low), float(high)  # both bounds must be numbers (inf included)
        return cls(low, high, body[0] == "(", body[-1] == ")")

    def __contains__(self, value: float) -> bool:
        low, high = _number(self.low), _number(self.high)
        above = value > low if self.low_open else value >= low
        below = value < high if self.high_open else value <= high
        return above and below

    def describe(self, integer: bool) -> str:
        """``in 1..4096`` for an integer setting, ``in (0, 1]`` for a number, ``>= 1`` for an open-ended one."""
        if math.isinf(float(self.high)):
            return f"{'>' if self.low_open else '>='} {self.low}"
        if integer and not (self.low_open or self.high_open):
            return f"in {self.low}..{self.high}"
        return f"in {'(' if self.low_open else '['}{self.low}, {self.high}{')' if self.high_open else ']'}"


def setting(default: Any, *, help: str, range: str = "", choices: tuple[str, ...] = ()) -> Any:
    """A settings dataclass field with the proto's rule in its metadata (help, range, choices)."""
    return dataclasses.field(default=default, metadata={"help": help, "range": range, "choices": tuple(choices)})


def override(base: type, name: str, default: Any, *, help: str) -> Any:
    """The field ``name`` of settings class ``base`` with another default and help, its rule kept (a subclass for
    another use of the same message, e.g. the warm-up's SFT settings)."""
    field = {f.name: f for f in dataclasses.fields(base)}[name]
    return dataclasses.field(default=default, metadata={**field.metadata, "help": help})


def choices(cls: type, name: str) -> tuple[str, ...]:
    """The accepted values of string setting ``name`` of settings class ``cls``."""
    return {f.name: f for f in dataclasses.fields(cls)}[name].metadata["choices"]


def accepted(field: dataclasses.Field) -> str:
    """What a field's rule accepts, in words (``in (0, 10]``, ``one of 'a', 'b'``); empty when it has no rule."""
    words = ""
    if field.metadata.get("choices"):
        words = "one of " + ", ".join(map(repr, field.metadata["choices"]))
    elif field.metadata.get("range"):
        words = Interval.parse(field.metadata["range"]).describe(_is_int_field(field))
    return f"{words} or null" if words and field.default is None else words


def check_rules(settings: Any) -> None:
    """Check every field of ``settings`` against its rule; the first that breaks it is INVALID_ARGUMENT naming it."""
    for field in dataclasses.fields(settings):
        value = getattr(settings, field.name)
        if value is None and field.default is None:
            continue
        if field.metadata.get("choices"):
            check(value in field.metadata["choices"], field.name, f"must be {accepted(field)}, got {value!r}")
        elif field.metadata.get("range"):
            number = isinstance(value, (int, float)) and not isinstance(value, bool)
            check(number and value in Interval.parse(field.metadata["range"]), field.name, f"must be {accepted(field)}")


def _number(text: str) -> float | int:
    """A bound as a number; an integer bound stays an int, so 2**63 - 1 is not rounded to 2**63."""
    try:
        return int(text)
    except ValueError:
        return float(text)


def _is_int_field(field: dataclasses.Field) -> bool:
    """Whether a generated field holds an integer (its annotation is a string under postponed evaluation)."""
    return str(field.type).removesuffix(" | None") in ("int", "<class 'int'>")
