"""The instruction-synthesis prompt (METHOD.md stage 1)."""
from __future__ import annotations

import random
from typing import Literal

PREAMBLE = (
    "You are asked to come up with a set of diverse task instructions. These task instructions will be given to "
    "an AI assistant and we will evaluate how well it completes them. Each instruction is one or two sentences, "
    "in English, self-contained, and something a person would really ask an assistant: writing, reasoning, coding, "
    "math, advice, classification or extraction. Write only the instruction, inside <instruction> tags, with no "
    "answer or explanation."
)
OPEN_TAG, CLOSE_TAG = "<instruction>", "</instruction>"


def pick_examples(seeds: list[str], generated: list[str], *, total: int, from_generated: int, rng: random.Random) -> list[str]:
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
    return chat_template(f"{PREAMBLE}\n\n{listed}\n\nWrite one new instruction in the same form.")


def sample_text(raw: str, *, style: Literal["completion", "chat"]) -> str:
    """The sample as a tagged text: completion samples continue an already open tag."""
    return OPEN_TAG + raw if style == "completion" else raw
