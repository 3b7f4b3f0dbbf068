"""``montessori plan``: will a run config fit the GPUs? Each stage's memory, from the models' config.json."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

#: The models a loop holds.
ROLES = ("teacher", "student")


def add_parser(commands) -> None:
    sub = commands.add_parser(
        "plan",
        help="Estimate each stage's GPU memory for a run config and refuse one that cannot fit (exit 2).",
        description="Estimate each stage's GPU memory (weights, gradients, AdamW moments, the influence scorer's "
        "snapshot, activations at the configured lengths and batches, the teacher's KV cache) from the models' "
        "config.json and the run config, and exit 2 naming the stage, the setting and the numbers when one does "
        "not fit a GPU. The teacher and each influence replica use one GPU; the trainer uses --gpus (FSDP shards a "
        "full fine-tune over them). Settings are resolved with the workers' defaults.",
    )
    sub.add_argument("--config", help="YAML or TOML run config (default: the embedded defaults)")
    sub.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config field")
    sub.add_argument("--gpus", type=int, default=1, help="GPUs of the trainer (default 1)")
    sub.add_argument("--gpu-memory", type=float, required=True, metavar="GiB", help="memory of one GPU, in GiB")
    sub.add_argument(
        "--model-config",
        action="append",
        default=[],
        metavar="ROLE=PATH",
        help="teacher= or student= a model folder or its config.json, instead of models.<role> (for a config "
        "whose models are store URIs the workstation cannot read)",
    )
    sub.add_argument("--json", action="store_true", help="print the estimates as JSON")


def run(args: argparse.Namespace) -> int:
    from common.config import load_config
    from common.errors import InvalidArgument
    from common.memory_plan import GIB, check_fits, plan_stages, usable_bytes
    from services.controller.config import RunConfig

    if args.gpus < 1:
        raise InvalidArgument("must be at least 1", field="--gpus")
    if not args.gpu_memory > 0:
        raise InvalidArgument("must be a positive number of GiB", field="--gpu-memory")
    config = _resolved(load_config(RunConfig, args.config, args.set))
    overrides = _model_overrides(args.model_config)
    shapes = {
        role: _shape(overrides.get(role) or getattr(config.models, role), role) for role in ("teacher", "student")
    }
    stages = plan_stages(config, shapes, gpus=args.gpus)
    usable = usable_bytes(args.gpu_memory)
    if args.json:
        print(json.dumps({"usable_gib": round(usable / GIB, 2), "stages": [s.to_dict() for s in stages]}, indent=2))
    else:
        print(f"{'stage':<10} {'model':<8} {'GPUs':>4} {'GiB/GPU':>8}  largest part")
        for stage in stages:
            largest = stage.largest()
            mark = "" if stage.bytes <= usable else "   <-- does not fit"
            print(
                f"{stage.stage:<10} {stage.model:<8} {stage.gpus:>4} {stage.gib:>8.1f}  "
                f"{largest.name} {largest.bytes / GIB:.1f} GiB{mark}"
            )
        print(f"usable per GPU: {usable / GIB:.1f} GiB of {args.gpu_memory:g} GiB")
    check_fits(stages, args.gpu_memory)
    return 0


def _resolved(config):
    """The stage sections resolved by the workers' configs (defaults filled in), as ``montessori config`` does."""
    from cli.sections import resolved

    return resolved(config)


def _model_overrides(items: list[str]) -> dict[str, str]:
    from common.errors import InvalidArgument

    overrides = {}
    for item in items:
        role, sep, path = item.partition("=")
        if not sep or role not in ("teacher", "student") or not path:
            raise InvalidArgument(f"expected teacher=PATH or student=PATH, got {item!r}", field="--model-config")
        overrides[role] = path
    return overrides


def _shape(location: str, role: str):
    """The ModelShape of ``location``: a local folder or config.json, or a model folder in an artifact store."""
    from common.errors import InvalidArgument, NotFound
    from common.memory_plan import ModelShape

    field = f"models.{role}"
    if "://" in location and not location.startswith("file://"):
        from common.artifacts import open_store

        scheme, _, rest = location.partition("://")
        bucket, _, key = rest.partition("/")
        store = open_store(f"{scheme}://{bucket}")
        source = f"{location}/config.json"
        try:
            text = store.get_bytes(f"{key}/config.json").decode()
        except NotFound:
            raise NotFound(f"{source} does not exist (or give --model-config {role}=FOLDER)", field=field) from None
    else:
        path = Path(location.removeprefix("file://"))
        path = path / "config.json" if path.is_dir() else path
        source = str(path)
        if not path.is_file():
            raise NotFound(f"no config.json at {location} (or give --model-config {role}=FOLDER)", field=field)
        text = path.read_text()
    try:
        document = json.loads(text)
    except ValueError as err:
        raise InvalidArgument(f"{source} is not JSON: {err}", field=field) from None
    return ModelShape.from_config(document, source=source)
