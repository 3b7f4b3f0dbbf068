"""Bridge from a transformers Trainer's step events to montessori progress sinks."""

from __future__ import annotations

from transformers import TrainerCallback

from common.progress import Progress


class ProgressCallback(TrainerCallback):
    """Reports each optimizer step; a sink that raises (e.g. Cancelled) stops training between steps."""

    def __init__(self, progress: Progress, stage: str):
        self.progress = progress
        self.stage = stage
        self.last_logs: dict = {}

    def on_log(self, args, state, control, logs=None, **kwargs):
        if logs:
            self.last_logs = {k: v for k, v in logs.items() if isinstance(v, (int, float))}

    def on_step_end(self, args, state, control, **kwargs):
        shown = {k: self.last_logs[k] for k in ("loss", "rewards/margins") if k in self.last_logs}
        self.progress(self.stage, state.global_step, max(state.max_steps, 1), shown)
