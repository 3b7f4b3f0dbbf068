"""How an (instruction, response) example becomes tokens, everywhere in the project.

Training (TRL SFT), influence scoring and evaluation all use the model's chat
template with the instruction as one user turn; the loss is on response tokens only.
"""
from __future__ import annotations

from dataclasses import dataclass

from common.errors import InvalidArgument

IGNORE_INDEX = -100


def instruction_text(instruction: str, input_text: str = "") -> str:
    """The user turn: the instruction, then its input (if any) after a blank line."""
    return f"{instruction}\n\n{input_text}" if input_text.strip() else instruction


def chat_prompt(tokenizer, user_text: str) -> str:
    """The chat-template text that asks the model to answer ``user_text`` (ends at the assistant header)."""
    return tokenizer.apply_chat_template([{"role": "user", "content": user_text}], tokenize=False, add_generation_prompt=True)


def sft_record(user_text: str, response: str) -> dict:
    """A conversational prompt-completion row, the form TRL's SFTTrainer trains on with completion-only loss."""
    return {
        "prompt": [{"role": "user", "content": user_text}],
        "completion": [{"role": "assistant", "content": response}],
    }


@dataclass(frozen=True)
class EncodedExample:
    """Token ids of prompt + response, with labels masked (``-100``) on the prompt."""

    input_ids: list[int]
    labels: list[int]


def encode_example(tokenizer, user_text: str, response: str, *, max_length: int, where: str) -> EncodedExample:
    """Tokenise one example for a response-only loss; an over-long example is an error naming ``where``."""
    prompt = chat_prompt(tokenizer, user_text)
    full = tokenizer.apply_chat_template(
        [{"role": "user", "content": user_text}, {"role": "assistant", "content": response}], tokenize=False
    )
    if not full.startswith(prompt):
        raise InvalidArgument(f"{where}: chat template does not extend the prompt with the response")
    prompt_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    completion_ids = tokenizer(full[len(prompt):], add_special_tokens=False)["input_ids"]
    if len(prompt_ids) + 1 > max_length:
        raise InvalidArgument(
            f"{where}: instruction is {len(prompt_ids)} tokens with the chat template, longer than the context window ({max_length})"
        )
    ids = (prompt_ids + completion_ids)[:max_length]
    labels = ([IGNORE_INDEX] * len(prompt_ids) + completion_ids)[:max_length]
    return EncodedExample(ids, labels)
