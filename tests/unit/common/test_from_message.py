"""StartLoop's one form of the run config: the LoopSpec's message becomes the RunConfig directly (from_message), and
that equals what the dict round trip (message -> dict -> dataclass) made, errors included."""

from __future__ import annotations

import pytest

from common.config import from_dict, from_message, message_to_dict, read_config_file
from common.errors import InvalidArgument
from common.protoconv import loop_spec
from services.controller.config import RunConfig
from tests.conftest import REPO


@pytest.mark.parametrize("name", ["tiny.yaml", "effect.yaml", "vllm-teacher.yaml"])
def test_a_config_from_its_message_equals_the_dict_round_trip(name):
    message = loop_spec(read_config_file(REPO / "configs" / name)).config
    direct = from_message(RunConfig, message)
    assert direct == from_dict(RunConfig, message_to_dict(message))
    assert direct.dpo == message.dpo and direct.dpo is not message.dpo  # a copy of the request's own settings


def test_an_invalid_field_is_named_with_its_path():
    message = loop_spec({"iterations": -1}).config
    with pytest.raises(InvalidArgument) as refused:
        from_message(RunConfig, message, path="spec.config")
    assert refused.value.field == "spec.config.iterations"
    message = loop_spec({"sizes": {"probe_prompts": -3}}).config
    with pytest.raises(InvalidArgument) as refused:
        from_message(RunConfig, message, path="spec.config")
    assert refused.value.field.startswith("spec.config.sizes.probe_prompts")
