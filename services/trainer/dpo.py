"""Teacher DPO with TRL (METHOD.md stage 6): a LoRA adapter on the current teacher by default."""
from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path

from transformers import PrinterCallback

from common.errors import FailedPrecondition
from common.models import ModelRef, load_model, load_tokenizer
from common.progress import Progress, no_progress
from services.preference.pairs import select_pairs
from services.trainer.callbacks import ProgressCallback
from services.trainer.common_args import base_args, schedule_kwargs
from services.trainer.config import DPOSettings


@dataclass
class DPOResult:
    """What a DPO run produced: an adapter (or full model) folder and the trainer's metrics."""

    output_dir: Path
    is_adapter: bool
    steps: int
    train_loss: float
    reward_margin_first: float
    reward_margin_last: float
    reward_accuracy_last: float
    pairs: int

    def metrics(self) -> dict:
        return {"steps": self.steps, "train_loss": self.train_loss, "pairs": self.pairs,
                "reward_margin_first": self.reward_margin_first, "reward_margin_last": self.reward_margin_last,
                "reward_accuracy_last": self.reward_accuracy_last, "adapter": self.is_adapter}


def training_pairs(pairs: list[dict], settings: DPOSettings) -> list[dict]:
    """The pairs a run trains on: all of them, or ``max_pairs`` balanced across prompt groups by influence margin."""
    return select_pairs(pairs, settings.max_pairs)


def train_dpo(teacher: ModelRef, pairs: list[dict], settings: DPOSettings, output_dir: Path, *,
              seed: int, progress: Progress = no_progress, stage: str = "dpo") -> DPOResult:
    """Train the teacher on ``pairs`` (``prompt``/``chosen``/``rejected``); the reference model is the
    frozen current teacher (the LoRA-disabled base, or a separate copy for full fine-tuning)."""
    from datasets import Dataset
    from peft import LoraConfig
    from trl import DPOConfig, DPOTrainer

    if not pairs:
        raise FailedPrecondition("no preference pairs to train on", field="pairs")
    pairs = training_pairs(pairs, settings)
    tokenizer = load_tokenizer(teacher.path, field="teacher.path")
    model = load_model(teacher, field="teacher.path", trainable=not settings.lora)
    ref_model = None if settings.lora else load_model(teacher, field="teacher.path")
    peft_config = LoraConfig(r=settings.lora_rank, lora_alpha=settings.lora_alpha, lora_dropout=settings.lora_dropout,
                             target_modules="all-linear", task_type="CAUSAL_LM") if settings.lora else None
    dataset = Dataset.from_list([{"prompt": p["prompt"], "chosen": p["chosen"], "rejected": p["rejected"]} for p in pairs])
    with tempfile.TemporaryDirectory(prefix="montessori-dpo-") as scratch:
        args = DPOConfig(
            **base_args(output_dir=scratch, seed=seed),
            **schedule_kwargs(settings, examples=len(pairs)),
            beta=settings.beta,
            learning_rate=settings.learning_rate,
            num_train_epochs=settings.epochs,
            per_device_train_batch_size=settings.batch_size,
            gradient_accumulation_steps=settings.gradient_accumulation_steps,
            max_length=settings.max_length,
        )
        callback = ProgressCallback(progress, stage)
        trainer = DPOTrainer(model=model, ref_model=ref_model, args=args, train_dataset=dataset,
                             processing_class=tokenizer, peft_config=peft_config, callbacks=[callback])
        trainer.remove_callback(PrinterCallback)  # metrics go to the manifest and progress bars, not stdout
        output = trainer.train()
        output_dir.mkdir(parents=True, exist_ok=True)
        trainer.model.save_pretrained(output_dir)
        if not settings.lora:
            tokenizer.save_pretrained(output_dir)
    history = [h for h in trainer.state.log_history if "rewards/margins" in h]
    margin = lambda h: float(h["rewards/margins"])  # noqa: E731
    return DPOResult(
        output_dir=output_dir, is_adapter=settings.lora, steps=int(output.global_step), train_loss=float(output.training_loss),
        reward_margin_first=margin(history[0]) if history else 0.0, reward_margin_last=margin(history[-1]) if history else 0.0,
        reward_accuracy_last=float(history[-1].get("rewards/accuracies", 0.0)) if history else 0.0, pairs=len(pairs),
    )
