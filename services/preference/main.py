"""The preference service's start-up: it has no settings of its own (each request carries its pairing rule)."""

from __future__ import annotations

import argparse

from common.service_main import Builder


def builder(args: argparse.Namespace, tls_dir: str) -> Builder:
    """How ``montessori serve preference`` builds the service."""
    from services.preference.servicer import build

    return build
