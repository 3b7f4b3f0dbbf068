"""Typed config: unknown keys, wrong types and ranges are errors naming the dotted field."""
from __future__ import annotations

import pytest

from common.config import from_dict, load_config, parse_overrides, to_dict
from common.errors import InvalidArgument, NotFound
from services.controller.config import RunConfig


def test_defaults_are_valid_and_roundtrip():
    config = RunConfig()
    assert from_dict(RunConfig, to_dict(config)) == config


@pytest.mark.parametrize("data,field,message", [
    ({"iterations": 0}, "iterations", "must be in 1..1000"),
    ({"iterations": "two"}, "iterations", "expected an integer"),
    ({"influence": {"optimizer": "adam"}}, "influence.optimizer", "must be one of"),
    ({"synthesis": {"top_p": 0}}, "synthesis.top_p", "must be in (0, 1]"),
    ({"dpo": {"lora_rank": -1}}, "dpo.lora_rank", "must be in 1..512"),
    ({"sizes": {"probe_prompt": 3}}, "sizes.probe_prompt", "unknown field"),
    ({"teacher": "x"}, "teacher", "unknown field"),
    ({"models": {"dtype": "int8"}}, "models.dtype", "must be float32"),
    ({"warmup": {"learning_rate": True}}, "warmup.learning_rate", "expected a number"),
])
def test_bad_values_name_the_field(data, field, message):
    with pytest.raises(InvalidArgument) as err:
        from_dict(RunConfig, data)
    assert err.value.field == field
    assert message in err.value.message


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
