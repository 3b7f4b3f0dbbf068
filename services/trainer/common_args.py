"""TrainingArguments shared by the SFT and DPO runs (one place for CPU/GPU, logging and schedule choices)."""
from __future__ import annotations

import math

import torch


def schedule_kwargs(schedule: str, *, examples: int, batch_size: int, accumulation: int, epochs: float) -> dict:
    """Scheduler arguments; warm-up-stable-decay gets 10% warm-up and 10% decay steps."""
    steps = max(1, math.ceil(math.ceil(examples / batch_size) / accumulation * epochs))
    if schedule == "warmup_stable_decay":
        return {"lr_scheduler_type": schedule, "warmup_steps": max(0, steps // 10),
                "lr_scheduler_kwargs": {"num_decay_steps": max(1, steps // 10)}}
    if schedule == "constant_with_warmup":
        return {"lr_scheduler_type": schedule, "warmup_steps": max(0, steps // 10)}
    return {"lr_scheduler_type": schedule}


def base_args(*, output_dir: str, seed: int) -> dict:
    """Arguments every montessori training run uses."""
    on_gpu = torch.cuda.is_available()
    return {
        "output_dir": output_dir,
        "seed": seed,
        "data_seed": seed,
        "logging_steps": 1,
        "save_strategy": "no",
        "report_to": [],
        "disable_tqdm": True,
        "use_cpu": not on_gpu,
        "bf16": on_gpu and torch.cuda.is_bf16_supported(),
        "optim": "adamw_torch",
        "dataloader_num_workers": 0,
        "remove_unused_columns": True,
    }
