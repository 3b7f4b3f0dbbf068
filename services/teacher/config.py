"""Settings of instruction synthesis and response generation (METHOD.md stages 1-2)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from common.config import check, field


@dataclass
class SynthesisConfig:
    """How the teacher writes instructions and answers them."""

    prompt_style: Literal["completion", "chat"] = field(
        "completion",
        help="'chat': the synthesis prompt is one user turn through the chat template (the paper). "
        "'completion': the same examples as plain text ending in an open <instruction> tag, stopping at "
        "</instruction>; small teachers follow it far better. The DPO prompt is always exactly this text.",
    )
    examples_per_prompt: int = field(8, help="In-context examples per synthesis prompt (paper: 8).")
    generated_examples_per_prompt: int = field(
        2, help="Of those, how many are earlier generated instructions once at least that many exist (paper: 2)."
    )
    samples_per_prompt: int = field(4, help="Instructions sampled per prompt, i.e. the prompt-group size n (paper: 4).")
    temperature: float = field(1.0, help="Sampling temperature for instructions (paper: 1.0).")
    top_p: float = field(0.9, help="Nucleus sampling for instructions (paper: 0.9).")
    presence_penalty: float = field(
        1.0, help="Presence penalty for instructions (paper: 1.0; applied as in vLLM, over generated tokens).")
    max_new_tokens: int = field(48, help="Token budget of one instruction sample (paper: 1024).")
    response_temperature: float = field(0.6, help="Sampling temperature for responses (paper: 0.6).")
    response_top_p: float = field(0.9, help="Nucleus sampling for responses (paper: 0.9).")
    response_max_new_tokens: int = field(96, help="Token budget of one response (paper: 1024).")
    rouge_threshold: float = field(
        0.7, help="Drop an instruction whose ROUGE-L F1 with any seed or already kept instruction exceeds this.")
    prompt_batch_size: int = field(4, help="Synthesis prompts generated together in one batch.")
    response_batch_size: int = field(8, help="Instructions answered together in one batch.")
    max_prompt_attempts_factor: int = field(
        4, help="Give up on reaching a target size after target/n * this many prompts (bad teachers waste prompts).")

    def __post_init__(self) -> None:
        check(1 <= self.examples_per_prompt <= 64, "examples_per_prompt", "must be in 1..64")
        check(0 <= self.generated_examples_per_prompt < self.examples_per_prompt, "generated_examples_per_prompt",
              "must be >= 0 and smaller than examples_per_prompt")
        check(1 <= self.samples_per_prompt <= 64, "samples_per_prompt", "must be in 1..64")
        check(0.0 <= self.temperature <= 5.0, "temperature", "must be in [0, 5]")
        check(0.0 < self.top_p <= 1.0, "top_p", "must be in (0, 1]")
        check(-2.0 <= self.presence_penalty <= 2.0, "presence_penalty", "must be in [-2, 2]")
        check(1 <= self.max_new_tokens <= 4096, "max_new_tokens", "must be in 1..4096")
        check(0.0 <= self.response_temperature <= 5.0, "response_temperature", "must be in [0, 5]")
        check(0.0 < self.response_top_p <= 1.0, "response_top_p", "must be in (0, 1]")
        check(1 <= self.response_max_new_tokens <= 4096, "response_max_new_tokens", "must be in 1..4096")
        check(0.0 < self.rouge_threshold <= 1.0, "rouge_threshold", "must be in (0, 1]")
        check(self.prompt_batch_size >= 1, "prompt_batch_size", "must be >= 1")
        check(self.response_batch_size >= 1, "response_batch_size", "must be >= 1")
        check(self.max_prompt_attempts_factor >= 1, "max_prompt_attempts_factor", "must be >= 1")
