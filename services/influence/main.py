"""The influence service's start-up: its device from ``montessori serve influence --device``."""

from __future__ import annotations

import argparse

from common.service_main import Builder


def builder(args: argparse.Namespace, tls_dir: str) -> Builder:
    """How ``montessori serve influence`` builds the service (Evaluate, and Score under ``auto``, run on
    ``--device``)."""
    from services.influence.servicer import build

    return lambda store, jobs, ready: build(store, jobs, ready, device=args.device or "auto")
