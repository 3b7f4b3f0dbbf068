"""Issue 22, finding 9: the student chat template is bounded in size and render time, a remote caller's local
``data.*`` paths are confined to the controller's data folder (and say nothing about which files exist), and
store keys are matched whole. Each test failed before its fix."""

from __future__ import annotations

import threading
import time

import pytest

from common.artifacts import validate_key
from common.chat import MAX_TEMPLATE_CHARS, RENDER_SECONDS
from common.config import from_dict
from common.errors import InvalidArgument
from common.models import ModelRef, load_tokenizer
from common.protoconv import loop_spec
from services.controller.config import RunConfig
from services.controller.servicer import spec_to_config
from tests.conftest import DATA

PLAIN = (
    "{% for m in messages %}{% if m['role'] == 'user' %}{{ 'Q: ' + m['content'] + '\n' }}"
    "{% else %}{{ 'A: ' + m['content'] + eos_token }}{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}{{ 'A: ' }}{% endif %}"
)
#: 10**10 iterations: jinja's sandbox bounds one range() to 100000 items, not a loop inside a loop.
SPINNING = "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}" + PLAIN


def _within(seconds: float, call):
    """``call()``'s outcome, or a failure if it is still running after ``seconds`` (the thread is left behind:
    a spinning render cannot be stopped from outside, which is the bug)."""
    outcome: dict = {}

    def run():
        try:
            outcome["value"] = call()
        except Exception as err:  # noqa: BLE001 - handed to the test
            outcome["error"] = err

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(seconds)
    if thread.is_alive():
        pytest.fail(f"still running after {seconds} s")
    return outcome


def test_a_template_that_spins_is_invalid_within_the_render_bound(tiny_student):
    """It used to hold the validating worker thread for hours."""
    started = time.monotonic()
    outcome = _within(30, lambda: load_tokenizer(ModelRef(str(tiny_student), (), SPINNING), field="student"))
    err = outcome.get("error")
    assert isinstance(err, InvalidArgument), outcome
    assert err.field == "student.chat_template" and "in time" in err.message
    assert time.monotonic() - started < RENDER_SECONDS + 20  # the bound, plus loading the tokenizer on 2 cores
    # The bound is per rendering and leaves ordinary templates alone.
    tokenizer = load_tokenizer(ModelRef(str(tiny_student), (), PLAIN), field="student")
    from common.chat import chat_prompt

    assert chat_prompt(tokenizer, "Hi") == "Q: Hi\nA: "


def test_an_oversized_template_is_invalid_naming_the_field(tiny_student):
    huge = PLAIN + "{# " + "x" * MAX_TEMPLATE_CHARS + " #}"
    with pytest.raises(InvalidArgument) as err:
        load_tokenizer(ModelRef(str(tiny_student), (), huge), field="student")
    assert err.value.field == "student.chat_template" and str(MAX_TEMPLATE_CHARS) in err.value.message
    with pytest.raises(InvalidArgument) as err:
        from_dict(RunConfig, {"models": {"student_chat_template": huge}})
    assert err.value.field == "models.student_chat_template"


class _Store:
    root_uri = "file:///nonexistent-store"


def _spec(seed_path: str):
    data = {"seed_path": seed_path, "reference_path": str(DATA / "reference.jsonl"), "eval_path": "data/eval.jsonl"}
    return loop_spec({"data": data})


@pytest.mark.parametrize("path", ["/etc/passwd", "/nonexistent/seed.jsonl", "data/../pyproject.toml"])
def test_a_remote_callers_data_path_outside_the_data_folder_is_invalid_whether_or_not_it_exists(path):
    """The controller used to read any file it could (/etc/passwd: an INVALID_ARGUMENT quoting line 1 of it)
    and answer NOT_FOUND for a missing one, so a caller learned which files exist."""
    with pytest.raises(InvalidArgument) as err:
        spec_to_config(_spec(path), _Store())
    assert err.value.field == "spec.config.data.seed_path"
    assert err.value.message.startswith("must be an artifact-store URI")  # one answer for every such path


def test_data_files_under_the_data_folder_and_store_uris_are_accepted():
    assert spec_to_config(_spec(str(DATA / "seed.jsonl")), _Store()).data.seed_path == str(DATA / "seed.jsonl")
    uri = "file:///nonexistent-store/data/0a/seed.jsonl"
    assert spec_to_config(_spec(uri), _Store()).data.seed_path == uri


@pytest.mark.parametrize("key", ["loops/a\n", "a/b\n", "a\n/b"])
def test_a_key_with_a_newline_is_invalid(key):
    """``re.match`` with ``$`` accepted a trailing newline: ``loops/a\\n`` was a valid key."""
    with pytest.raises(InvalidArgument):
        validate_key(key, field="output_prefix")
