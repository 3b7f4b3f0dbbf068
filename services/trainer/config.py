"""Training settings (TRL trainers); defaults are METHOD.md's paper values unless a help string says otherwise.

The CPU demo scales them down in ``services/controller/config.py``. Schedules: the official code
uses transformers 4.44's warm-up-stable-decay schedule (linear warm-up from 0, a stable phase,
a cosine decay to ``min_lr_ratio`` x the peak) for the student SFT and the teacher DPO, and for the
warm-up a schedule that only warms up (``warmup_ratio`` 1.0) and then stays at the peak.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import get_type_hints

from common.config import check, field
from common.device import DEVICE_SETTINGS, is_device_setting
from common.settings_rules import override
from montessori.v1.settings import DPOSettingsFields, SFTSettingsFields

#: The learning-rate schedules TRL's trainers run (the ``lr_scheduler`` setting's accepted values).
Schedule = get_type_hints(SFTSettingsFields)["lr_scheduler"]


def _check_schedule(settings) -> None:
    """The schedule rule SFT, warm-up and DPO settings share: the warm-up and the decay fit in the run."""
    check(settings.warmup_ratio + settings.decay_ratio <= 1.0, "decay_ratio", "warmup_ratio + decay_ratio must be <= 1")


def final_lr_ratio(settings) -> float:
    """The learning rate a run ends on (after its last scheduler step), as a fraction of the peak.

    This is what a saved AdamW state's param groups carry, and so the learning rate of every
    faithful influence step restored from a warm-up.
    """
    if settings.lr_scheduler in ("constant", "constant_with_warmup"):
        return 1.0
    if settings.lr_scheduler == "warmup_stable_decay":
        return settings.min_lr_ratio
    return 0.0  # linear and cosine decay to zero


@dataclass
class SFTSettings(SFTSettingsFields):
    """Supervised fine-tuning of the student on the training set (response-only loss, TRL SFTTrainer).

    Fields, defaults and accepted values: ``montessori.v1.SFTSettings`` (generated into
    ``montessori/v1/settings.py``). The warm-up before probing is the same run with :class:`WarmupSettings`' defaults.
    """

    def __post_init__(self) -> None:
        super().__post_init__()
        _check_schedule(self)


@dataclass
class WarmupSettings(SFTSettings):
    """The student's warm-up SFT before probing: its AdamW state, learning rate included, is what
    every faithful influence step restores, so its schedule must end at the peak learning rate.

    Same fields as :class:`SFTSettings` (one trainer runs both); only the defaults differ.
    """

    lr_scheduler: Schedule = override(
        SFTSettingsFields,
        "lr_scheduler",
        "constant_with_warmup",
        help="Learning-rate schedule; it must end at the peak learning rate, because the influence steps use the "
        "rate the warm-up ends on (paper: warm-up-stable-decay with warm-up ratio 1.0 and min_lr_ratio 1.0, which "
        "under the official transformers 4.44 is a linear warm-up from 0 over all steps, ending at the peak: "
        "constant_with_warmup with warmup_ratio 1.0 here; newer transformers start a warm-up at min_lr_ratio, "
        "which would make the official values a constant schedule).",
    )
    warmup_ratio: float = override(
        SFTSettingsFields,
        "warmup_ratio",
        1.0,
        help="Share of the optimizer steps spent warming up linearly to the peak (paper: 1.0).",
    )
    decay_ratio: float = override(
        SFTSettingsFields, "decay_ratio", 0.0, help="warmup_stable_decay: share of the steps in the decay (paper: 0)."
    )
    min_lr_ratio: float = override(
        SFTSettingsFields,
        "min_lr_ratio",
        1.0,
        help="warmup_stable_decay: the learning rate the schedule ends on, as a fraction of the peak; must be "
        "1 for a warm-up (paper: 1.0).",
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        check(
            final_lr_ratio(self) == 1.0,
            "lr_scheduler",
            "a warm-up must end at its peak learning rate (the influence steps use it): use constant, "
            "constant_with_warmup, or warmup_stable_decay with min_lr_ratio 1",
        )


@dataclass
class DPOSettings(DPOSettingsFields):
    """DPO of the teacher on (prompt, chosen, rejected) pairs (TRL DPOTrainer).

    Fields, defaults and accepted values: ``montessori.v1.DPOSettings`` (generated into
    ``montessori/v1/settings.py``).
    """

    def __post_init__(self) -> None:
        super().__post_init__()
        _check_schedule(self)


@dataclass
class TrainerServiceConfig:
    """The trainer service's own settings (``montessori serve trainer`` flags), not a stage's."""

    processes: int = field(
        1,
        help="Training processes of one stage: 1 trains in the service process; N > 1 launches N ranks (one per "
        "GPU) with `accelerate launch` and publishes rank 0's output.",
    )
    accelerate_config: str = field(
        "",
        help="accelerate config file of the multi-process launch (configs/accelerate/: DDP, FSDP); required when "
        "processes > 1, whose count overrides the file's num_processes.",
    )
    device: str = field(
        "auto",
        help="Where a one-process stage trains: 'auto' (the first CUDA device when there is one, else the CPU), "
        "'cpu', 'cuda' or 'cuda:N'; on CUDA with bf16 mixed precision where supported (fp32 master weights). "
        "With processes > 1 it must be 'auto': accelerate puts each rank on its own device.",
    )
    restarts: int = field(
        1,
        help="With processes > 1: launches after the first when the ranks crash without an error of their own "
        "(a signal, a collective's transport); each resumes from the last checkpoint. 0 fails at once.",
    )

    def __post_init__(self) -> None:
        check(1 <= self.processes <= 1024, "processes", "must be in 1..1024")
        check(0 <= self.restarts <= 10, "restarts", "must be in 0..10")
        check(is_device_setting(self.device), "device", f"must be {DEVICE_SETTINGS}")
        check(self.processes == 1 or self.device == "auto", "device", "must be auto when processes > 1")
        if self.processes > 1:
            check(bool(self.accelerate_config), "accelerate_config", "is required when processes > 1")
            check(Path(self.accelerate_config).is_file(), "accelerate_config", f"no file {self.accelerate_config}")


def resolve_processes(setting: str) -> int:
    """A ``--processes`` value as a count: a positive integer, or ``auto`` (the visible CUDA devices, at least 1)."""
    if setting == "auto":
        import torch

        return max(torch.cuda.device_count(), 1)
    check(setting.isdigit() and int(setting) >= 1, "processes", f"must be a positive integer or auto, got {setting!r}")
    return int(setting)
