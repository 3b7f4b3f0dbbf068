"""TrainingArguments shared by the SFT and DPO runs (one place for CPU/GPU, logging and schedule choices)."""

from __future__ import annotations

import math
import shutil
from pathlib import Path

import torch

from common.device import resolve_device
from common.errors import FailedPrecondition

#: Where TRL's TensorBoard callback writes under the trainer's output_dir (transformers 5 has no logging_dir).
TENSORBOARD_DIR = "runs"


def optimizer_steps(settings, *, examples: int, processes: int = 1) -> int:
    """Optimizer steps of one run, counted as the transformers Trainer counts them (no dropped last batch); with
    ``processes`` ranks each takes every ``processes``-th micro-batch (batch_size is per rank).

    Exact as long as the trainer keeps every example; TRL's SFT drops an example whose response is
    truncated away entirely (a prompt longer than ``max_length``), which would make this an overcount.
    """
    micro_batches = math.ceil(math.ceil(examples / settings.batch_size) / processes)
    per_epoch = max(math.ceil(micro_batches / settings.gradient_accumulation_steps), 1)
    return max(math.ceil(settings.epochs * per_epoch), 1)


def schedule_kwargs(settings, *, examples: int, processes: int = 1) -> dict:
    """Scheduler arguments of ``settings`` (:class:`SFTSettings`, :class:`WarmupSettings` or :class:`DPOSettings`).

    Phase lengths are ``int(ratio * steps)``, as the official code computes them. For
    warm-up-stable-decay the Trainer passes the real step count, so the stable phase is whatever
    warm-up and decay leave and the decay ends on the last step at ``min_lr_ratio`` x the peak.
    """
    steps = optimizer_steps(settings, examples=examples, processes=processes)
    warmup = int(settings.warmup_ratio * steps)
    if settings.lr_scheduler == "warmup_stable_decay":
        return {
            "lr_scheduler_type": settings.lr_scheduler,
            "warmup_steps": warmup,
            "lr_scheduler_kwargs": {
                "num_decay_steps": int(settings.decay_ratio * steps),
                "min_lr_ratio": settings.min_lr_ratio,
            },
        }
    if settings.lr_scheduler == "constant":
        return {"lr_scheduler_type": "constant"}
    return {"lr_scheduler_type": settings.lr_scheduler, "warmup_steps": warmup}


def device_args(device: torch.device, *, precision: str = "auto", bf16_supported: bool | None = None) -> dict:
    """The TrainingArguments that place a run on ``device`` (resolved, see ``common.device``): ``use_cpu`` on the
    CPU; on CUDA, bf16 mixed precision where the device supports it (``bf16_supported``: None asks torch). bf16 is
    autocast only: the Trainer keeps the fp32 master weights and optimizer state, so a small learning rate's step
    is not rounded away. ``precision`` (the settings') 'bfloat16' asks for that autocast on any device, 'float32'
    for none. In a multi-process launch accelerate then puts each rank on its own device."""
    if device.type != "cuda":
        return {"use_cpu": True, "bf16": precision == "bfloat16"}
    if precision != "auto":
        return {"use_cpu": False, "bf16": precision == "bfloat16"}
    if bf16_supported is None:
        bf16_supported = torch.cuda.is_bf16_supported()
    return {"use_cpu": False, "bf16": bool(bf16_supported)}


def base_args(
    *,
    output_dir: str,
    seed: int,
    report_to: str = "none",
    checkpoint_every: int = 0,
    device: str | torch.device = "auto",
    precision: str = "auto",
) -> dict:
    """Arguments every montessori training run uses; ``report_to`` is the settings' (its help: trainer.proto).
    ``checkpoint_every``: the Trainer saves a full checkpoint into ``output_dir`` every this many optimizer steps,
    keeping only the latest (0: none); ``callbacks.CheckpointCallback`` uploads each one to the store.
    ``device``: a torch device or a device setting (FAILED_PRECONDITION naming ``device`` when absent)."""
    device = device if isinstance(device, torch.device) else resolve_device(device, field="device")
    saving = {"save_strategy": "steps", "save_steps": checkpoint_every, "save_total_limit": 1}
    return {
        "output_dir": output_dir,
        "seed": seed,
        "data_seed": seed,
        "logging_steps": 1,
        **(saving if checkpoint_every else {"save_strategy": "no"}),
        "report_to": report_to,
        "disable_tqdm": True,
        **device_args(device, precision=precision),
        "optim": "adamw_torch",
        "dataloader_num_workers": 0,
        "remove_unused_columns": True,
    }


def gathered_state_dict(trainer) -> dict | None:
    """The weights to save after training: None (the model's own) unless FSDP shards them across the ranks, then
    the full state dict gathered to rank 0 (every rank must call this: it is a collective)."""
    return trainer.accelerator.get_state_dict(trainer.model) if trainer.is_fsdp_enabled else None


def require_reporting(report_to: str) -> None:
    """Fail before any model loads when the named integration is not installed (transformers fails only at train())."""
    if report_to in ("none", "all"):  # "all" means whichever are installed
        return
    from transformers.integrations import get_available_reporting_integrations

    if report_to not in get_available_reporting_integrations():
        raise FailedPrecondition(f"{report_to} is not installed on this trainer", field="report_to")


def keep_reports(scratch: str | Path, output_dir: Path) -> None:
    """Move TensorBoard event files from the scratch output_dir into the published folder (before scratch is
    deleted)."""
    runs = Path(scratch) / TENSORBOARD_DIR
    if runs.is_dir():
        shutil.move(str(runs), str(output_dir / TENSORBOARD_DIR))
