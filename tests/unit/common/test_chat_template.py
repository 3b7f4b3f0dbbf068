"""The student's chat template: the default for a templateless tokenizer, an explicit one that overrides the
folder's, bad ones named by their field, and the template travelling with a model (requests, SFT output)."""

from __future__ import annotations

import pytest
from transformers import AutoTokenizer

from common.artifacts import LocalArtifactStore
from common.chat import DEFAULT_CHAT_TEMPLATE, IGNORE_INDEX, chat_prompt, default_chat_template, encode_example
from common.config import load_config
from common.errors import InvalidArgument
from common.models import ModelRef, load_tokenizer
from common.request_fields import model_from_proto
from montessori.v1 import common_pb2
from services.controller.config import RunConfig
from services.controller.executor import LoopModel
from tests.templateless import templateless_copy

#: A template unlike the tiny models' ChatML, so that using it is visible in the rendered text.
PLAIN = (
    "{% for m in messages %}{% if m['role'] == 'user' %}{{ 'Q: ' + m['content'] + '\n' }}"
    "{% else %}{{ 'A: ' + m['content'] + eos_token }}{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}{{ 'A: ' }}{% endif %}"
)


@pytest.fixture()
def base_student(tiny_student, tmp_path):
    return templateless_copy(tiny_student, tmp_path / "base-student")


def test_a_templateless_tokenizer_gets_the_default_and_only_the_response_is_trained(base_student):
    assert AutoTokenizer.from_pretrained(base_student).chat_template is None
    tokenizer = load_tokenizer(base_student, field="student")
    assert tokenizer.chat_template == DEFAULT_CHAT_TEMPLATE  # this tokenizer puts no bos before plain text
    prompt = chat_prompt(tokenizer, "Name a colour.")
    assert prompt == "### Instruction:\nName a colour.\n\n### Response:\n"
    encoded = encode_example(tokenizer, "Name a colour.", "Blue.", max_length=64, where="t")
    prompt_len = len(tokenizer(prompt, add_special_tokens=False)["input_ids"])
    assert encoded.labels[:prompt_len] == [IGNORE_INDEX] * prompt_len
    assert encoded.input_ids[prompt_len:] == encoded.labels[prompt_len:]
    assert tokenizer.decode(encoded.labels[prompt_len:]) == "Blue.<|im_end|>"
    assert encoded.labels[-1] == tokenizer.eos_token_id  # the response ends on the token the model learns to stop on


def test_the_default_opens_with_bos_when_the_tokenizer_puts_one_before_plain_text(base_student):
    from tokenizers import processors

    tokenizer = load_tokenizer(base_student, field="student")
    tokenizer._tokenizer.post_processor = processors.TemplateProcessing(
        single=f"{tokenizer.bos_token} $A", special_tokens=[(tokenizer.bos_token, tokenizer.bos_token_id)]
    )
    assert tokenizer("a")["input_ids"][0] == tokenizer.bos_token_id
    tokenizer.chat_template = default_chat_template(tokenizer)
    assert chat_prompt(tokenizer, "Hi").startswith(f"{tokenizer.bos_token}### Instruction:\n")


def test_an_explicit_template_overrides_the_folders_own(tiny_student):
    assert "<|im_start|>" in chat_prompt(load_tokenizer(tiny_student, field="student"), "Hi")
    for tokenizer in (
        load_tokenizer(tiny_student, field="student", chat_template=PLAIN),
        load_tokenizer(ModelRef(str(tiny_student), chat_template=PLAIN), field="student"),
    ):
        assert chat_prompt(tokenizer, "Hi") == "Q: Hi\nA: "
        encoded = encode_example(tokenizer, "Hi", "Yes.", max_length=64, where="t")
        assert tokenizer.decode([t for t in encoded.labels if t != IGNORE_INDEX]) == "Yes.<|im_end|>"


@pytest.mark.parametrize(
    "template,message",
    [
        (
            "{% if add_generation_prompt %}ASK {% endif %}{% for m in messages %}{{ m['content'] }}{% endfor %}",
            "does not extend the prompt",
        ),
        (
            "{% for m in messages %}{% if m['role'] == 'user' %}{{ m['content'] }}{% endif %}{% endfor %}",
            "does not extend the prompt",
        ),
        ("{% for m in messages %}{{ m['content'] }", "does not render"),
        ("   ", "must be a non-empty"),
        (5, "must be a Jinja chat template string"),
    ],
)
def test_a_bad_template_is_an_invalid_argument_naming_the_field(tiny_student, template, message):
    with pytest.raises(InvalidArgument, match=message) as err:
        load_tokenizer(
            tiny_student, field="models.student", chat_template=template, template_field="models.student_chat_template"
        )
    assert err.value.field == "models.student_chat_template"


@pytest.mark.parametrize("value,message", [("5", "expected a string"), ("''", "must be a non-empty")])
def test_the_config_field_is_a_non_empty_string(value, message):
    with pytest.raises(InvalidArgument, match=message) as err:
        load_config(RunConfig, None, [f"models.student_chat_template={value}"])
    assert err.value.field == "models.student_chat_template"


def test_the_loop_checks_the_template_against_the_student_before_any_work(tiny_teacher, tiny_student, tmp_path):
    from cli.local import local_runner

    config = load_config(
        RunConfig,
        None,
        [
            f"models.teacher={tiny_teacher}",
            f"models.student={tiny_student}",
            f"artifacts={tmp_path / 'store'}",
            "loop_id=bad-template",
            "models.student_chat_template=\"{{ messages[0]['content'] }}\"",
        ],
    )
    with pytest.raises(InvalidArgument, match="does not extend the prompt") as err:
        local_runner(config).prepare()
    assert err.value.field == "models.student_chat_template"
    assert not (tmp_path / "store" / "loops" / "bad-template").exists()  # the data it imported to check is gone


def test_the_template_travels_in_model_requests(tiny_student, tmp_path):
    store = LocalArtifactStore(tmp_path / "store")
    spec = LoopModel(path=str(tiny_student), chat_template=PLAIN).to_proto()
    assert model_from_proto(spec, store, field="student") == ModelRef(str(tiny_student), (), PLAIN)
    unset = LoopModel(path=str(tiny_student)).to_proto()
    assert not unset.HasField("chat_template")
    assert model_from_proto(unset, store, field="student").chat_template is None
    with pytest.raises(InvalidArgument) as err:
        model_from_proto(common_pb2.ModelSpec(path=str(tiny_student), chat_template=""), store, field="student")
    assert err.value.field == "student.chat_template"


def test_a_trained_student_keeps_the_template_it_was_trained_with(tiny_student, tmp_path):
    from services.trainer.config import SFTSettings
    from services.trainer.sft import train_sft

    examples = [("Name a colour.", "Blue."), ("Name a fruit.", "Apple.")]
    result = train_sft(
        ModelRef(str(tiny_student), chat_template=PLAIN),
        examples,
        SFTSettings(learning_rate=1e-3, batch_size=2),
        tmp_path / "out",
        seed=0,
    )
    assert AutoTokenizer.from_pretrained(result.output_dir).chat_template == PLAIN
    assert chat_prompt(load_tokenizer(result.output_dir, field="student"), "Hi") == "Q: Hi\nA: "


def test_an_explicit_template_reaches_the_trainer_service_over_grpc(tiny_student, tmp_path):
    from common.grpc_server import ServerConfig
    from common.service_main import start_service
    from montessori.v1 import trainer_pb2
    from services.controller.remote import RemoteExecutor, WorkerAddresses
    from services.trainer.servicer import build

    service = start_service("trainer", ServerConfig(artifacts=str(tmp_path / "store")), build)
    unused = "127.0.0.1:9"  # channels are lazy: only the trainer is called
    executor = RemoteExecutor(
        service.store, WorkerAddresses(unused, unused, unused, f"127.0.0.1:{service.port}"), request_prefix="t"
    )
    try:
        candidates = service.store.put_jsonl(
            "in/candidates.jsonl",
            [
                {"instruction": "Name a colour.", "response": "Blue."},
                {"instruction": "Name a fruit.", "response": "Apple."},
            ],
        )
        result = executor.run(
            trainer_pb2.TrainStudentRequest(
                output_prefix="out",
                student=LoopModel(path=str(tiny_student), chat_template=PLAIN).to_proto(),
                candidates=common_pb2.ArtifactRef(uri=candidates.uri, sha256=candidates.sha256),
                sft=trainer_pb2.SFTSettings(learning_rate=1e-3, batch_size=2),
                seed=0,
            )
        )
    finally:
        executor.close()
        service.stop()
    folder = service.store.local_path(service.store.key_of(result.outputs["model"].uri))
    assert AutoTokenizer.from_pretrained(folder).chat_template == PLAIN
