"""How an (instruction, response) example becomes tokens, everywhere in the project.

Training (TRL SFT), influence scoring and evaluation all use the tokenizer's chat
template with the instruction as one user turn; the loss is on response tokens only.
Which template a tokenizer carries is decided once, when it is loaded
(:func:`common.models.load_tokenizer`): an explicit one (``models.student_chat_template``),
else the model folder's own, else :func:`default_chat_template`. A fine-tuned student
is saved with the template it was trained with, so every later load agrees.
"""

from __future__ import annotations

import contextlib
import sys
import time
from dataclasses import dataclass

from common.errors import InvalidArgument

IGNORE_INDEX = -100
#: Largest chat template accepted (characters): real ones are a few KiB (Llama 3's is 4 KiB).
MAX_TEMPLATE_CHARS = 64 * 1024
#: Longest one rendering of a chat template may run: a template is code from the caller, and jinja's
#: sandbox bounds one range() (100000 items) but not nested loops, which could hold a worker thread for hours.
RENDER_SECONDS = 2.0
#: The file name jinja compiles templates under (``jinja2.environment.Template.from_code``).
_TEMPLATE_CODE = "<template>"

#: The turn format given to a tokenizer that has none (a base model). Alpaca-style plain text
#: rather than ChatML: its markers are ordinary words that a base model's vocabulary already
#: holds and its pretraining has seen, where ChatML's ``<|im_start|>`` would be split into
#: sub-words (or need new, untrained embedding rows); it matches the data's Alpaca rows; and
#: each response ends with the tokenizer's own eos token, which a base model already knows as
#: "end of document", so that it learns to stop there. The assistant turn ends exactly at eos
#: (no trailing newline) so that the stop token is the last label of every example.
DEFAULT_CHAT_TEMPLATE = (
    "{%- for message in messages -%}"
    "{%- if message['role'] == 'assistant' -%}"
    "{{ '### Response:\n' + message['content'] + eos_token }}{%- if not loop.last -%}{{ '\n\n' }}{%- endif -%}"
    "{%- elif message['role'] == 'system' -%}"
    "{{ message['content'] + '\n\n' }}"
    "{%- else -%}"
    "{{ '### Instruction:\n' + message['content'] + '\n\n' }}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{ '### Response:\n' }}{%- endif -%}"
)


def instruction_text(instruction: str, input_text: str = "") -> str:
    """The user turn: the instruction, then its input (if any) after a blank line."""
    return f"{instruction}\n\n{input_text}" if input_text.strip() else instruction


class TemplateTimeout(Exception):
    """A chat template rendered for longer than :data:`RENDER_SECONDS`."""


@contextlib.contextmanager
def _render_deadline(seconds: float):
    """Abort template code that runs past ``seconds``: a line tracer on the frames jinja compiled (only those,
    so the tokenizer's own Python runs untraced) raises :class:`TemplateTimeout` inside the template. A
    thread cannot be killed from outside; the template has to stop itself."""
    end = time.monotonic() + seconds

    def in_template(frame, event, arg):
        if time.monotonic() > end:
            raise TemplateTimeout(f"rendering took longer than {seconds:g} s")
        return in_template

    def on_call(frame, event, arg):
        return in_template if frame.f_code.co_filename == _TEMPLATE_CODE else None

    previous = sys.gettrace()
    sys.settrace(on_call)
    try:
        yield
    finally:
        sys.settrace(previous)


def render(tokenizer, messages: list[dict], *, add_generation_prompt: bool = False) -> str:
    """The tokenizer's chat template applied to ``messages`` as text, in at most :data:`RENDER_SECONDS`
    (:class:`TemplateTimeout` past it). Every rendering in the project goes through here."""
    with _render_deadline(RENDER_SECONDS):
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_generation_prompt)


def chat_prompt(tokenizer, user_text: str) -> str:
    """The chat-template text that asks the model to answer ``user_text`` (ends at the assistant header)."""
    return render(tokenizer, [{"role": "user", "content": user_text}], add_generation_prompt=True)


def sft_record(user_text: str, response: str) -> dict:
    """A conversational prompt-completion row, the form TRL's SFTTrainer trains on with completion-only loss."""
    return {
        "prompt": [{"role": "user", "content": user_text}],
        "completion": [{"role": "assistant", "content": response}],
    }


_PROBE_USER, _PROBE_RESPONSE = "Name a colour.", "Blue."


def default_chat_template(tokenizer) -> str:
    """:data:`DEFAULT_CHAT_TEMPLATE`, opened with the bos token when ``tokenizer`` puts one before plain text.

    Templates are tokenised without special tokens (TRL and :func:`encode_example` alike), so a
    template must write the bos token itself; a base model was pretrained on documents that begin
    with it exactly when its tokenizer adds it (Gemma, Llama), and not otherwise (GPT-2, SmolLM2).
    """
    bos_id = tokenizer.bos_token_id
    adds_bos = bos_id is not None and tokenizer("a")["input_ids"][:1] == [bos_id]
    return ("{{ bos_token }}" if adds_bos else "") + DEFAULT_CHAT_TEMPLATE


def check_template_size(template: str, *, field: str) -> None:
    """:class:`InvalidArgument` naming ``field`` for a template over :data:`MAX_TEMPLATE_CHARS`."""
    if len(template) > MAX_TEMPLATE_CHARS:
        raise InvalidArgument(
            f"chat template is {len(template)} characters; at most {MAX_TEMPLATE_CHARS} are accepted", field=field
        )


def check_chat_template(tokenizer, *, field: str) -> None:
    """:class:`InvalidArgument` naming ``field`` unless the tokenizer's template renders a user turn, a
    generation prompt that the full conversation extends, and the response after it."""
    template = tokenizer.chat_template
    if not isinstance(template, str):
        raise InvalidArgument(f"must be a Jinja chat template string, got {type(template).__name__}", field=field)
    if not template.strip():
        raise InvalidArgument("must be a non-empty Jinja chat template", field=field)
    check_template_size(template, field=field)
    try:
        prompt = chat_prompt(tokenizer, _PROBE_USER)
        full = render(
            tokenizer, [{"role": "user", "content": _PROBE_USER}, {"role": "assistant", "content": _PROBE_RESPONSE}]
        )
    except TemplateTimeout as err:
        raise InvalidArgument(f"chat template does not render in time: {err}", field=field) from None
    except Exception as err:  # jinja raises several types (syntax, undefined, raise_exception); the user needs one line
        lines = str(err).strip().splitlines()
        raise InvalidArgument(
            f"chat template does not render: {type(err).__name__}: {lines[0] if lines else ''}", field=field
        ) from None
    if _PROBE_USER not in prompt:
        raise InvalidArgument("chat template does not render the user turn's content", field=field)
    if not full.startswith(prompt) or _PROBE_RESPONSE not in full[len(prompt) :]:
        raise InvalidArgument(
            "chat template does not extend the prompt (with the generation prompt) with the response", field=field
        )


@dataclass(frozen=True)
class EncodedExample:
    """Token ids of prompt + response, with labels masked (``-100``) on the prompt."""

    input_ids: list[int]
    labels: list[int]


def encode_example(tokenizer, user_text: str, response: str, *, max_length: int, where: str) -> EncodedExample:
    """Tokenise one example for a response-only loss; an over-long example is an error naming ``where``."""
    try:
        prompt = chat_prompt(tokenizer, user_text)
        full = render(tokenizer, [{"role": "user", "content": user_text}, {"role": "assistant", "content": response}])
    except TemplateTimeout as err:
        raise InvalidArgument(f"{where}: chat template does not render in time: {err}") from None
    if not full.startswith(prompt):
        raise InvalidArgument(f"{where}: chat template does not extend the prompt with the response")
    prompt_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    completion_ids = tokenizer(full[len(prompt) :], add_special_tokens=False)["input_ids"]
    if len(prompt_ids) + 1 > max_length:
        raise InvalidArgument(
            f"{where}: instruction is {len(prompt_ids)} tokens with the chat template, "
            f"longer than the context window ({max_length})"
        )
    ids = (prompt_ids + completion_ids)[:max_length]
    labels = ([IGNORE_INDEX] * len(prompt_ids) + completion_ids)[:max_length]
    return EncodedExample(ids, labels)
