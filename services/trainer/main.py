"""The trainer service's start-up: TrainerServiceConfig from ``montessori serve trainer``'s flags."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

from common.device import add_device_argument

if TYPE_CHECKING:  # every `montessori` command builds the flags: this module imports no server at module level
    from common.service_main import Builder
    from services.trainer.config import TrainerServiceConfig


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """``montessori serve trainer``'s own flags (cli/serve.py adds the shared ones)."""
    add_device_argument(parser, "a one-process stage (--processes 1; with more it must be auto)")
    parser.add_argument(
        "--processes",
        default="1",
        help="training processes of one stage (1: in the service process; N or auto, the visible CUDA "
        "devices: N ranks launched with accelerate)",
    )
    parser.add_argument(
        "--accelerate-config",
        default=None,
        help="accelerate config of the multi-process launch (configs/accelerate/), for --processes > 1",
    )
    parser.add_argument(
        "--restarts",
        type=int,
        default=1,
        help="relaunches of crashed ranks (--processes > 1), each from the last checkpoint (default 1)",
    )


def builder(args: argparse.Namespace, tls_dir: str) -> Builder:
    """How ``montessori serve trainer`` builds the service (``--processes`` > 1: each stage in that many ranks)."""
    from services.trainer.servicer import build

    config = service_config(args)
    return lambda store, jobs, ready: build(store, jobs, ready, config=config)


def service_config(args: argparse.Namespace) -> TrainerServiceConfig:
    """The trainer's config from its flags, by name (validated by the dataclass)."""
    from services.trainer.config import TrainerServiceConfig, resolve_processes

    return TrainerServiceConfig(
        processes=resolve_processes(args.processes),
        accelerate_config=args.accelerate_config or "",
        device=args.device or "auto",
        restarts=args.restarts,
    )
