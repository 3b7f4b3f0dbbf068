"""The preference service's start-up: it has no settings of its own (each request carries its pairing rule)."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # every `montessori` command builds the flags: this module imports no server at module level
    from common.service_main import Builder


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """``montessori serve preference``'s own flags: none (cli/serve.py adds the shared ones)."""


def builder(args: argparse.Namespace, tls_dir: str) -> Builder:
    """How ``montessori serve preference`` builds the service."""
    from services.preference.servicer import build

    return build
