"""The instruction-synthesis prompt (METHOD.md stage 1)."""

from __future__ import annotations

import random
from typing import Literal

from common.chat import instruction_text

# The official prompt's content (src/prompt.py of the authors' code) in our own words: a new
# instruction a person would really ask, imperative or interrogative, high-quality, correct, clear
# and concise because it trains models; an input only when the instruction cannot be answered
# without one, written after the instruction inside the same tags.
PREAMBLE = (
    "Write a new instruction: a request or a question that a person would really put to an AI assistant, as a "
    "command or as a question. The instructions you write will be used to train models, so make each one "
    "high-quality, correct, clear and concise. If the instruction cannot be answered without some material to "
    "work on (for example, the paragraph to summarise or the code to fix), give that input after the "
    "instruction, separated by a blank line, inside the same tags; otherwise write the instruction alone. "
    "Write it as <instruction>the instruction, then its input if it needs one</instruction>. "
    "Here are examples of instructions:"
)
# Chat style only: the official prompt also asks for a short reason before the instruction. A
# completion-style prompt ends in an open tag, so the sample is the instruction itself.
CHAT_CLOSING = "Briefly say why you chose it, then write exactly one new instruction in the same form."
OPEN_TAG, CLOSE_TAG = "<instruction>", "</instruction>"


def seed_examples(rows: list[dict]) -> list[str]:
    """In-context example texts of Alpaca rows: the instruction, then its ``input`` (if any) after a blank line.

    The join is :func:`common.chat.instruction_text`, the same one the student is trained and
    evaluated on, so an example shows the teacher exactly the user text its instructions become;
    the blank line keeps the input visibly apart from the instruction (the official code joins
    with a space).
    """
    return [instruction_text(row["instruction"], row.get("input", "")) for row in rows]


def pick_examples(
    seeds: list[str], generated: list[str], *, total: int, from_generated: int, rng: random.Random
) -> list[str]:
    """``total`` in-context examples: all seeds until ``from_generated`` instructions exist, then a mix; shuffled."""
    take_generated = from_generated if len(generated) >= from_generated else 0
    examples = rng.sample(seeds, min(total - take_generated, len(seeds))) + rng.sample(generated, take_generated)
    rng.shuffle(examples)
    return examples


def synthesis_prompt(examples: list[str], *, style: Literal["completion", "chat"], chat_template=None) -> str:
    """The exact text the teacher sees; ``chat_template(user_text)`` renders the chat style."""
    listed = "\n".join(f"{OPEN_TAG}{example}{CLOSE_TAG}" for example in examples)
    if style == "completion":
        return f"{PREAMBLE}\n\n{listed}\n{OPEN_TAG}"
    if chat_template is None:
        raise ValueError("chat style needs the teacher's chat template")
    return chat_template(f"{PREAMBLE}\n\n{listed}\n\n{CHAT_CLOSING}")


def sample_text(raw: str, *, style: Literal["completion", "chat"]) -> str:
    """The sample as a tagged text: completion samples continue an already open tag."""
    return OPEN_TAG + raw if style == "completion" else raw
