"""A stage setting is declared once, in the proto (its comment, default and rule), and the generated dataclasses
check every rule: each default is accepted, a value just outside each range or outside each choice list is refused
naming the field, and the services' configs add only the rules that relate two fields."""

from __future__ import annotations

import dataclasses
import math

import pytest

from common.errors import InvalidArgument
from common.settings_rules import Interval, accepted, check_rules
from montessori.v1 import common_pb2, influence_pb2, preference_pb2, teacher_pb2, trainer_pb2
from services.influence.config import InfluenceConfig
from services.preference.config import PreferenceConfig
from services.teacher.config import SynthesisConfig
from services.trainer.config import DPOSettings, SFTSettings, WarmupSettings

CONFIGS = [
    (teacher_pb2.SynthesisSettings, SynthesisConfig),
    (influence_pb2.InfluenceSettings, InfluenceConfig),
    (preference_pb2.PreferenceSettings, PreferenceConfig),
    (trainer_pb2.SFTSettings, SFTSettings),
    (trainer_pb2.DPOSettings, DPOSettings),
]


@pytest.mark.parametrize(
    "text,inside,outside,words",
    [
        ("[1, 4096]", [1, 4096], [0, 4097], "in 1..4096"),
        ("(0, 1]", [1e-9, 1.0], [0.0, 1.0000001], "in (0, 1]"),
        ("[0, 1)", [0.0, 0.999], [-1e-9, 1.0], "in [0, 1)"),
        ("[1, inf)", [1, 10**12], [0, -5], ">= 1"),
        ("(0, inf)", [1e-12], [0.0], "> 0"),
    ],
)
def test_an_interval_holds_its_bounds_as_written(text, inside, outside, words):
    interval = Interval.parse(text)
    assert all(v in interval for v in inside)
    assert not any(v in interval for v in outside)
    assert interval.describe(integer=isinstance(inside[0], int)) == words


@pytest.mark.parametrize("text", ["", "1..4", "[1 4]", "[a, 2]", "{1, 2}"])
def test_a_malformed_interval_is_an_error(text):
    with pytest.raises(ValueError):
        Interval.parse(text)


def _outside(field: dataclasses.Field) -> list:
    """The values just outside a field's rule: the nearest below and above its interval, or a value not listed."""
    if field.metadata["choices"]:
        return ["not-a-choice"]
    interval = Interval.parse(field.metadata["range"])
    integer = "int" in str(field.type)
    number = int if integer else float
    low = number(interval.low)
    values = [low if interval.low_open else (low - 1 if integer else math.nextafter(low, -math.inf))]
    if not math.isinf(float(interval.high)):
        high = number(interval.high)
        values.append(high if interval.high_open else (high + 1 if integer else math.nextafter(high, math.inf)))
    return values


@pytest.mark.parametrize("message,config", CONFIGS, ids=lambda x: getattr(x, "__name__", ""))
def test_every_setting_has_a_rule_its_default_obeys_and_values_outside_it_are_refused(message, config):
    fields = {f.name: f for f in dataclasses.fields(config)}
    assert list(fields) == [f.name for f in message.DESCRIPTOR.fields], "one field per proto field, in its order"
    default = config()  # every default obeys its rule (and the cross-field rules)
    for name, field in fields.items():
        rule = message.DESCRIPTOR.fields_by_name[name].GetOptions().Extensions[common_pb2.setting]
        expected = None if not rule.HasField("default") else getattr(default, name)
        assert field.default == expected and (rule.HasField("default") or field.default is None), name
        if not accepted(field):
            continue  # a flag, or a string checked by a cross-field rule (device)
        for value in _outside(field):
            with pytest.raises(InvalidArgument) as refused:
                check_rules(_unchecked(default, name, value))
            assert refused.value.field == name, (name, value)
            assert accepted(field) in refused.value.message


def _unchecked(settings, name, value):
    """A copy of ``settings`` with one field changed, built without running its checks (check_rules runs next)."""
    copy = object.__new__(type(settings))
    copy.__dict__.update({**settings.__dict__, name: value})
    return copy


def test_a_value_outside_a_rule_is_refused_at_construction_naming_the_field():
    with pytest.raises(InvalidArgument, match=r"beta: must be in \(0, 10\]"):
        DPOSettings(beta=0.0)
    with pytest.raises(InvalidArgument, match="max_pairs: must be >= 1 or null"):
        DPOSettings(max_pairs=0)
    with pytest.raises(InvalidArgument, match="loss_type: must be one of 'sigmoid', 'ipo', 'hinge', 'robust'"):
        DPOSettings(loss_type="kto")
    assert DPOSettings(max_pairs=None).max_pairs is None


def test_the_services_add_only_the_rules_between_fields():
    with pytest.raises(InvalidArgument, match="decay_ratio: warmup_ratio \\+ decay_ratio must be <= 1"):
        SFTSettings(warmup_ratio=0.7, decay_ratio=0.4)
    with pytest.raises(InvalidArgument, match="generated_examples_per_prompt: must be smaller than"):
        SynthesisConfig(examples_per_prompt=2, generated_examples_per_prompt=2)
    with pytest.raises(InvalidArgument, match="audit_size: needs mode first_order or projected"):
        InfluenceConfig(audit_size=4)
    with pytest.raises(InvalidArgument, match="lr_scheduler: a warm-up must end at its peak"):
        WarmupSettings(lr_scheduler="cosine")


def test_the_warm_up_overrides_defaults_and_keeps_the_rules():
    warmup = {f.name: f for f in dataclasses.fields(WarmupSettings)}
    sft = {f.name: f for f in dataclasses.fields(SFTSettings)}
    for name in ("lr_scheduler", "warmup_ratio", "decay_ratio", "min_lr_ratio"):
        assert warmup[name].metadata["range"] == sft[name].metadata["range"]
        assert warmup[name].metadata["choices"] == sft[name].metadata["choices"]
    with pytest.raises(InvalidArgument, match=r"warmup_ratio: must be in \[0, 1\]"):
        WarmupSettings(warmup_ratio=1.5)
