"""The influence service's start-up: its device from ``montessori serve influence --device``."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

from common.device import add_device_argument

if TYPE_CHECKING:  # every `montessori` command builds the flags: this module imports no server at module level
    from common.service_main import Builder


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """``montessori serve influence``'s own flags (cli/serve.py adds the shared ones)."""
    add_device_argument(parser, "Evaluate (and Score, when its request's influence.device is auto)")


def builder(args: argparse.Namespace, tls_dir: str) -> Builder:
    """How ``montessori serve influence`` builds the service (Evaluate, and Score under ``auto``, run on
    ``--device``)."""
    from services.influence.servicer import build

    return lambda store, jobs, ready: build(store, jobs, ready, device=args.device or "auto")
