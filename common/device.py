"""The one way a ``device`` setting becomes a torch device.

Every service's config takes the same setting: ``auto`` (the first CUDA device when there is one, else the
CPU), ``cpu``, ``cuda`` (the current CUDA device) or ``cuda:N``. The spelling is checked where the config is
built (:func:`is_device_setting`, no CUDA needed: a controller without a GPU validates a worker's config);
whether the device exists is checked where the models are placed (:func:`resolve_device`).
"""

from __future__ import annotations

import argparse
import re
from typing import TYPE_CHECKING

from common.errors import FailedPrecondition, InvalidArgument

if TYPE_CHECKING:  # torch is imported where a device is resolved: the settings are checked without it (a client)
    import torch

#: What a device setting may say.
DEVICE_SETTINGS = "'auto', 'cpu', 'cuda' or 'cuda:N'"
_SETTING = re.compile(r"auto|cpu|cuda(:\d+)?")


def is_device_setting(setting: object) -> bool:
    """Whether ``setting`` is spelled as a device setting (``auto``, ``cpu``, ``cuda``, ``cuda:N``)."""
    return isinstance(setting, str) and _SETTING.fullmatch(setting) is not None


def add_device_argument(parser: argparse.ArgumentParser, runs: str) -> None:
    """``--device`` of ``montessori serve <service>`` (teacher, influence, trainer): ``runs`` says what runs on it.
    ``cli/serve.py`` resolves it at start-up, before any model loads."""
    parser.add_argument(
        "--device",
        default=None,
        help=f"where {runs} runs: auto (default: the first CUDA device, else the CPU), cpu, cuda or cuda:N",
    )


def resolve_device(setting: str, *, field: str = "device") -> torch.device:
    """The torch device that ``setting`` names: :class:`InvalidArgument` naming ``field`` when it is not a device
    setting, :class:`FailedPrecondition` naming ``field`` when it asks for a CUDA device this machine lacks."""
    import torch

    if not is_device_setting(setting):
        raise InvalidArgument(f"must be {DEVICE_SETTINGS}, got {setting!r}", field=field)
    if setting == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if setting == "cpu":
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise FailedPrecondition(f"{setting!r} asked for, but torch sees no CUDA device on this machine", field=field)
    device = torch.device(setting)
    if device.index is not None and device.index >= torch.cuda.device_count():
        raise FailedPrecondition(
            f"{setting!r} asked for, but this machine has {torch.cuda.device_count()} CUDA device(s)", field=field
        )
    return device
