"""The teacher service's start-up: its config from ``montessori serve teacher``'s flags and ``--teacher-config``."""

from __future__ import annotations

import argparse

from common.service_main import Builder
from services.teacher.config import TeacherServiceConfig


def builder(args: argparse.Namespace, tls_dir: str) -> Builder:
    """How ``montessori serve teacher`` builds the service (its config validated now, before anything loads)."""
    from services.teacher.servicer import build

    config = service_config(args)
    return lambda store, jobs, ready: build(store, jobs, ready, preload=args.preload, config=config)


def service_config(args: argparse.Namespace) -> TeacherServiceConfig:
    """TeacherServiceConfig from ``--teacher-config`` and the flags (validated: errors name the field)."""
    from common.config import from_dict

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
