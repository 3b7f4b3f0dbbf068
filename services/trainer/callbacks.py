"""Bridges from a transformers Trainer's events to montessori progress sinks and to checkpoints in the store."""

from __future__ import annotations

from pathlib import Path

from transformers import TrainerCallback
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

from common.checkpoints import StageCheckpoint
from common.progress import Progress

#: The part of a trainer's store checkpoint that holds the Trainer's checkpoint folder.
TRAINER_PART = "trainer"


class ProgressCallback(TrainerCallback):
    """Reports each optimizer step; a sink that raises (e.g. Cancelled) stops training between steps."""

    def __init__(self, progress: Progress, stage: str):
        self.progress = progress
        self.stage = stage
        self.last_logs: dict = {}

    def on_train_begin(self, args, state, control, **kwargs):
        if state.global_step:  # resumed from a checkpoint: progress starts from its step
            self.progress(self.stage, state.global_step, max(state.max_steps, 1), {})

    def on_log(self, args, state, control, logs=None, **kwargs):
        if logs:
            self.last_logs = {k: v for k, v in logs.items() if isinstance(v, (int, float))}

    def on_step_end(self, args, state, control, **kwargs):
        shown = {k: self.last_logs[k] for k in ("loss", "rewards/margins") if k in self.last_logs}
        self.progress(self.stage, state.global_step, max(state.max_steps, 1), shown)


class CheckpointCallback(TrainerCallback):
    """Uploads each checkpoint the Trainer saves (every ``save_steps`` optimizer steps, see ``base_args``) to the
    store as the stage checkpoint's only version. The Trainer's own save after the last step is skipped: the stage
    publishes its output right after it, and deletes the checkpoint."""

    def __init__(self, checkpoint: StageCheckpoint):
        self.checkpoint = checkpoint

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step >= state.max_steps:
            control.should_save = False

    def on_save(self, args, state, control, **kwargs):
        folder = Path(args.output_dir) / f"{PREFIX_CHECKPOINT_DIR}-{state.global_step}"
        # Moved, not copied: the Trainer keeps only the latest checkpoint anyway (save_total_limit 1).
        meta = {"step": state.global_step, "max_steps": state.max_steps}
        self.checkpoint.save({TRAINER_PART: folder}, meta, move=True)


def restore_checkpoint(checkpoint: StageCheckpoint | None) -> str | None:
    """The Trainer checkpoint folder (a local, verified copy) to resume this work from, or None."""
    restored = checkpoint.restore(lambda parts: parts[TRAINER_PART]) if checkpoint else None
    return str(restored.value) if restored else None


def mean_train_loss(state) -> float:
    """The mean of the per-step losses logged over the whole run (``logging_steps`` 1), summed in step order as the
    Trainer sums them: its ``training_loss`` for an uninterrupted run, and the same value after a resume (where the
    Trainer's own averages only the steps of the resumed call). The steps' losses come back with the checkpoint's
    log history."""
    losses = [entry["loss"] for entry in state.log_history if "loss" in entry]
    total = 0.0
    for loss in losses:
        total += loss
    return total / max(state.global_step, 0.001)
