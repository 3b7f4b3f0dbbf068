"""The run config's stage sections and the worker config each resolves into: one table for ``montessori config``,
``montessori run`` and ``montessori plan``. It imports only the workers' config modules, which load no torch, so a
client install resolves a run config as a worker would."""

from __future__ import annotations

from common.config import from_dict, message_to_dict
from services.controller.config import RunConfig
from services.influence.config import InfluenceConfig
from services.preference.config import PreferenceConfig
from services.teacher.config import SynthesisConfig
from services.trainer.config import DPOSettings, SFTSettings, WarmupSettings

#: The run config's stage sections and the worker config each resolves into (defaults, ranges, help).
STAGE_SECTIONS: dict[str, type] = {
    "synthesis": SynthesisConfig,
    "influence": InfluenceConfig,
    "preference": PreferenceConfig,
    "warmup": WarmupSettings,
    "dpo": DPOSettings,
    "sft": SFTSettings,
}


def resolved(config: RunConfig) -> RunConfig:
    """``config`` with every stage section resolved by its worker's config (defaults filled in, validated):
    what ``montessori config`` prints."""
    from dataclasses import replace

    return replace(
        config,
        **{
            name: from_dict(cls, message_to_dict(getattr(config, name)), path=name)
            for name, cls in STAGE_SECTIONS.items()
        },
    )
