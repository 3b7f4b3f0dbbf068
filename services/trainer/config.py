"""Training settings (TRL trainers); defaults are METHOD.md's, scaled to the CPU demo where noted."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from common.config import check, field

SCHEDULES = Literal["constant", "linear", "cosine", "warmup_stable_decay", "constant_with_warmup"]


@dataclass
class SFTSettings:
    """Supervised fine-tuning of the student (response-only loss, TRL SFTTrainer)."""

    learning_rate: float = field(5e-6, help="Peak learning rate (paper: 5e-6).")
    epochs: float = field(1.0, help="Passes over the data (paper: 1).")
    batch_size: int = field(4, help="Per-device batch size.")
    gradient_accumulation_steps: int = field(1, help="Micro-batches per optimizer step (paper: effective batch 32).")
    lr_scheduler: SCHEDULES = field(
        "constant",
        help="Learning-rate schedule. The warm-up must not decay to zero: influence steps use the lr it ends on.")
    max_length: int = field(512, help="Token cap of one example; longer examples are truncated by TRL.")
    weight_decay: float = field(0.0, help="AdamW weight decay.")

    def __post_init__(self) -> None:
        check(0.0 < self.learning_rate <= 1.0, "learning_rate", "must be in (0, 1]")
        check(0.0 < self.epochs <= 100.0, "epochs", "must be in (0, 100]")
        check(1 <= self.batch_size <= 4096, "batch_size", "must be in 1..4096")
        check(1 <= self.gradient_accumulation_steps <= 4096, "gradient_accumulation_steps", "must be in 1..4096")
        check(8 <= self.max_length <= 131072, "max_length", "must be in 8..131072")
        check(0.0 <= self.weight_decay < 1.0, "weight_decay", "must be in [0, 1)")


@dataclass
class DPOSettings:
    """DPO of the teacher on (prompt, chosen, rejected) pairs (TRL DPOTrainer)."""

    beta: float = field(0.1, help="DPO beta (paper: 0.1).")
    learning_rate: float = field(
        5e-5, help="Learning rate. Paper: 1e-6 for full fine-tuning of 8B; LoRA adapters need a larger one.")
    epochs: float = field(1.0, help="Passes over the pairs (paper: 1).")
    batch_size: int = field(2, help="Per-device batch size (paper: 2).")
    gradient_accumulation_steps: int = field(1, help="Micro-batches per optimizer step.")
    lr_scheduler: SCHEDULES = field("warmup_stable_decay", help="Learning-rate schedule (paper: warm-up-stable-decay).")
    max_length: int = field(1024, help="Token cap of prompt + sample (paper: 1024); the prompt is never cut.")
    lora: bool = field(
        True, help="Train a LoRA adapter (hot-loadable by a serving engine) instead of all weights (paper: full).")
    lora_rank: int = field(8, help="LoRA rank r.")
    lora_alpha: int = field(16, help="LoRA alpha.")
    lora_dropout: float = field(0.0, help="LoRA dropout (0 keeps training deterministic).")
    max_pairs: int | None = field(None, help="Train on at most this many pairs (None: all).")

    def __post_init__(self) -> None:
        check(0.0 < self.beta <= 10.0, "beta", "must be in (0, 10]")
        check(0.0 < self.learning_rate <= 1.0, "learning_rate", "must be in (0, 1]")
        check(0.0 < self.epochs <= 100.0, "epochs", "must be in (0, 100]")
        check(1 <= self.batch_size <= 4096, "batch_size", "must be in 1..4096")
        check(1 <= self.gradient_accumulation_steps <= 4096, "gradient_accumulation_steps", "must be in 1..4096")
        check(16 <= self.max_length <= 131072, "max_length", "must be in 16..131072")
        check(1 <= self.lora_rank <= 512, "lora_rank", "must be in 1..512")
        check(1 <= self.lora_alpha <= 4096, "lora_alpha", "must be in 1..4096")
        check(0.0 <= self.lora_dropout < 1.0, "lora_dropout", "must be in [0, 1)")
        check(self.max_pairs is None or self.max_pairs >= 1, "max_pairs", "must be >= 1 or null")
