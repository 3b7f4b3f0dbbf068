"""Typed config: unknown keys, wrong types and ranges are errors naming the dotted field."""

from __future__ import annotations

import pytest

from common.config import from_dict, load_config, parse_overrides, to_dict
from common.errors import InvalidArgument, NotFound
from services.controller.config import RunConfig


def test_defaults_are_valid_and_roundtrip():
    config = RunConfig()
    assert from_dict(RunConfig, to_dict(config)) == config


@pytest.mark.parametrize(
    "data,field,message",
    [
        ({"iterations": 0}, "iterations", "must be in 1..1000"),
        ({"iterations": "two"}, "iterations", "expected an integer"),
        ({"influence": {"optimizer": "adam"}}, "influence.optimizer", "must be one of"),
        ({"synthesis": {"top_p": 0}}, "synthesis.top_p", "must be in (0, 1]"),
        ({"dpo": {"lora_rank": -1}}, "dpo.lora_rank", "must be in 1..512"),
        ({"sizes": {"probe_prompt": 3}}, "sizes.probe_prompt", "unknown field"),
        ({"teacher": "x"}, "teacher", "unknown field"),
        ({"models": {"dtype": "int8"}}, "models.dtype", "must be float32"),
        ({"warmup": {"learning_rate": True}}, "warmup.learning_rate", "expected a number"),
    ],
)
def test_bad_values_name_the_field(data, field, message):
    """Types anywhere, and the controller's own ranges, when the config is read; a stage section's ranges when its
    worker resolves it (the in-process runner resolves every section right after reading the config)."""
    from cli.local import resolved

    with pytest.raises(InvalidArgument) as err:
        resolved(from_dict(RunConfig, data))
    assert err.value.field == field
    assert message in err.value.message


def test_stage_sections_hold_only_what_is_set_and_the_worker_fills_in_the_rest():
    from cli.local import resolved
    from services.influence.config import InfluenceConfig

    config = from_dict(RunConfig, {"influence": {"mode": "first_order", "audit_size": 4}})
    assert to_dict(config)["influence"] == {"mode": "first_order", "audit_size": 4}
    assert resolved(config).influence == InfluenceConfig(mode="first_order", audit_size=4)
    assert to_dict(RunConfig())["influence"] == {"reference_size": 8}  # the demo's own default of the section
    with pytest.raises(InvalidArgument) as err:
        from_dict(RunConfig, {"influence": {"projection_dim": 2**40}})
    assert err.value.field == "influence.projection_dim"  # an int32 of the message: out of range when read


def test_file_then_overrides(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("iterations: 3\nsizes:\n  probe_prompts: 5\n")
    config = load_config(RunConfig, path, ["sizes.probe_prompts=7", "influence.optimizer=faithful"])
    assert (config.iterations, config.sizes.probe_prompts, config.influence.optimizer) == (3, 7, "faithful")
    assert config.sizes.train_examples == RunConfig().sizes.train_examples


def test_toml_files_are_read(tmp_path):
    path = tmp_path / "c.toml"
    path.write_text("iterations = 4\n[sizes]\nprobe_prompts = 2\n")
    assert load_config(RunConfig, path).sizes.probe_prompts == 2


def test_missing_or_broken_files(tmp_path):
    with pytest.raises(NotFound, match="does not exist"):
        load_config(RunConfig, tmp_path / "nope.yaml")
    (tmp_path / "bad.yaml").write_text("iterations: [1,\n")
    with pytest.raises(InvalidArgument, match="not valid YAML"):
        load_config(RunConfig, tmp_path / "bad.yaml")


def test_override_syntax():
    assert parse_overrides(["a.b=3", "c=x"]) == {"a": {"b": 3}, "c": "x"}
    with pytest.raises(InvalidArgument, match="KEY=VALUE"):
        parse_overrides(["novalue"])
