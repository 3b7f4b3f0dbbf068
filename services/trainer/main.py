"""The trainer service's start-up: TrainerServiceConfig from ``montessori serve trainer``'s flags."""

from __future__ import annotations

import argparse

from common.service_main import Builder
from services.trainer.config import TrainerServiceConfig, resolve_processes


def builder(args: argparse.Namespace, tls_dir: str) -> Builder:
    """How ``montessori serve trainer`` builds the service (``--processes`` > 1: each stage in that many ranks)."""
    from services.trainer.servicer import build

    config = service_config(args)
    return lambda store, jobs, ready: build(store, jobs, ready, config=config)


def service_config(args: argparse.Namespace) -> TrainerServiceConfig:
    """The trainer's config from its flags, by name (validated by the dataclass)."""
    return TrainerServiceConfig(
        processes=resolve_processes(args.processes),
        accelerate_config=args.accelerate_config or "",
        device=args.device or "auto",
        restarts=args.restarts,
    )
