"""The run config resolved as the workers would (``montessori config``, ``montessori run`` and ``montessori plan``):
each stage section by the worker config the stage registry (``common/stages.py``) names for it. Those are the
workers' config modules, which load no torch, so a client install resolves a run config as a worker would."""

from __future__ import annotations

from common.config import from_dict, message_to_dict
from common.stages import stage_sections
from services.controller.config import RunConfig


def resolved(config: RunConfig) -> RunConfig:
    """``config`` with every stage section resolved by its worker's config (defaults filled in, validated):
    what ``montessori config`` prints."""
    from dataclasses import replace

    return replace(
        config,
        **{
            name: from_dict(cls, message_to_dict(getattr(config, name)), path=name)
            for name, cls in stage_sections().items()
        },
    )
