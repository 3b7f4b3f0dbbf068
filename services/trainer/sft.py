"""Student SFT with TRL (warm-up and training-set runs), on the student's chat template (see common/chat.py)."""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path

from transformers import PrinterCallback

from common.chat import sft_record
from common.checkpoints import StageCheckpoint
from common.errors import FailedPrecondition
from common.models import ModelRef, load_model, load_tokenizer
from common.optimizer_state import save_adamw_state
from common.progress import Progress, no_progress
from services.trainer.callbacks import CheckpointCallback, ProgressCallback, mean_train_loss, restore_checkpoint
from services.trainer.common_args import (
    base_args,
    gathered_state_dict,
    keep_reports,
    require_reporting,
    schedule_kwargs,
)
from services.trainer.config import SFTSettings


@dataclass
class SFTResult:
    """What an SFT run produced."""

    output_dir: Path
    steps: int
    train_loss: float
    examples: int

    def metrics(self) -> dict:
        return {"steps": self.steps, "train_loss": self.train_loss, "examples": self.examples}


def train_sft(
    student: ModelRef,
    examples: list[tuple[str, str]],
    settings: SFTSettings,
    output_dir: Path,
    *,
    seed: int,
    save_optimizer: bool = False,
    progress: Progress = no_progress,
    stage: str = "sft",
    checkpoint: StageCheckpoint | None = None,
    processes: int = 1,
    device: str = "auto",
) -> SFTResult:
    """Fine-tune ``student`` on (user_text, response) pairs; save an HF folder (and the AdamW state) to
    ``output_dir``. With ``checkpoint`` (and ``settings.checkpoint_every``), the run resumes from the checkpoint of
    this work if there is one and saves one every ``checkpoint_every`` optimizer steps. ``processes``: the ranks of
    a multi-process run (``services/trainer/rank.py``), each with its own ``batch_size`` batches."""
    from datasets import Dataset
    from trl import SFTConfig, SFTTrainer

    if not examples:
        raise FailedPrecondition("no training examples", field="examples")
    require_reporting(settings.report_to)
    # The student's chat template (explicit, the folder's, or the default) is set here and saved with the output,
    # so influence scoring and evaluation of this model format examples exactly as it was trained on them.
    tokenizer = load_tokenizer(student, field="student.path")
    model = load_model(student, field="student.path", trainable=True)
    dataset = Dataset.from_list([sft_record(user, response) for user, response in examples])
    every = settings.checkpoint_every if checkpoint is not None else 0  # 0: the Trainer saves nothing
    with tempfile.TemporaryDirectory(prefix="montessori-sft-") as scratch:
        args = SFTConfig(
            **base_args(
                output_dir=scratch,
                seed=seed,
                report_to=settings.report_to,
                checkpoint_every=every,
                device=device,
                precision=settings.precision,
            ),
            **schedule_kwargs(settings, examples=len(examples), processes=processes),
            learning_rate=settings.learning_rate,
            num_train_epochs=settings.epochs,
            per_device_train_batch_size=settings.batch_size,
            gradient_accumulation_steps=settings.gradient_accumulation_steps,
            weight_decay=settings.weight_decay,
            max_length=settings.max_length,
            completion_only_loss=True,
        )
        callbacks = [ProgressCallback(progress, stage)]
        if every:
            callbacks.append(CheckpointCallback(checkpoint))
        trainer = SFTTrainer(
            model=model, args=args, train_dataset=dataset, processing_class=tokenizer, callbacks=callbacks
        )
        trainer.remove_callback(PrinterCallback)  # metrics go to the manifest and progress bars, not stdout
        if save_optimizer and trainer.is_fsdp_enabled:
            raise FailedPrecondition(
                "the warm-up's AdamW state cannot be saved from FSDP shards: run the warm-up with DDP or one process",
                field="trainer.accelerate_config",
            )
        output = trainer.train(resume_from_checkpoint=restore_checkpoint(checkpoint) if every else None)
        state_dict = gathered_state_dict(trainer)  # every rank takes part; None but under FSDP
        if trainer.args.should_save:  # rank 0 of a multi-process run (see services/trainer/launch.py), or the one
            output_dir.mkdir(parents=True, exist_ok=True)
            model.save_pretrained(output_dir, state_dict=state_dict)
            tokenizer.save_pretrained(output_dir)
            keep_reports(scratch, output_dir)
            if save_optimizer:
                optimizer = getattr(trainer.optimizer, "optimizer", trainer.optimizer)  # unwrap accelerate's wrapper
                save_adamw_state(optimizer, model, output_dir)
    return SFTResult(output_dir, int(output.global_step), mean_train_loss(trainer.state), len(examples))
