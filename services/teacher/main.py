"""The teacher service's start-up: its config from ``montessori serve teacher``'s flags and ``--teacher-config``."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

from common.device import add_device_argument

if TYPE_CHECKING:  # every `montessori` command builds the flags: this module imports no server at module level
    from common.service_main import Builder
    from services.teacher.config import TeacherServiceConfig


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """``montessori serve teacher``'s own flags (cli/serve.py adds the shared ones); ``--teacher-config`` holds the
    same settings, the flags override it."""
    parser.add_argument("--preload", action="append", default=[], help="model folder to load before SERVING")
    parser.add_argument("--dtype", default=None, help="weights dtype of the transformers backend (default float32)")
    add_device_argument(parser, "the model of the transformers backend")
    parser.add_argument(
        "--backend",
        choices=("transformers", "vllm"),
        default=None,
        help="generation backend (vllm needs the vLLM environment, see README)",
    )
    parser.add_argument(
        "--teacher-config",
        default=None,
        help="YAML file of TeacherServiceConfig (backend, dtype, vllm: {...}); flags override it",
    )


def builder(args: argparse.Namespace, tls_dir: str) -> Builder:
    """How ``montessori serve teacher`` builds the service (its config validated now, before anything loads)."""
    from services.teacher.servicer import build

    config = service_config(args)
    return lambda store, jobs, ready: build(store, jobs, ready, preload=args.preload, config=config)


def service_config(args: argparse.Namespace) -> TeacherServiceConfig:
    """TeacherServiceConfig from ``--teacher-config`` and the flags (validated: errors name the field)."""
    from common.config import from_dict
    from services.teacher.config import TeacherServiceConfig

    values: dict = {}
    if args.teacher_config:
        import yaml

        from common.errors import InvalidArgument

        try:
            with open(args.teacher_config) as handle:
                values = yaml.safe_load(handle) or {}
        except (OSError, yaml.YAMLError) as err:
            raise InvalidArgument(f"cannot read {args.teacher_config}: {err}", field="--teacher-config") from None
    for key in ("backend", "dtype", "device"):
        if getattr(args, key) is not None:
            values[key] = getattr(args, key)
    return from_dict(TeacherServiceConfig, values, path="teacher-config")
