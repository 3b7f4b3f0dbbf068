"""``montessori loop {start,status,watch,stop,list}``: talk to the controller service."""

from __future__ import annotations

import argparse
import json
import sys

import grpc

from common.envs import service_address
from common.transport import add_client_flags, controller_transport

EXIT_BAD_INPUT = 2
_CLIENT_ERRORS = {"INVALID_ARGUMENT", "NOT_FOUND", "FAILED_PRECONDITION", "ALREADY_EXISTS"}


def add_parser(commands) -> None:
    loop = commands.add_parser("loop", help="Start, follow and stop loops on the controller service.")
    loop.add_argument(
        "--controller", default=None, help=f"controller address (default {service_address('controller')})"
    )
    add_client_flags(loop)
    actions = loop.add_subparsers(dest="action", required=True)
    start = actions.add_parser("start", help="start a loop from a config file")
    start.add_argument("--config", help="YAML or TOML run config (as for `montessori run`)")
    start.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config field")
    start.add_argument("--request-id", default="", help="idempotency key: the same id returns the same loop")
    start.add_argument("--watch", action="store_true", help="follow the loop after starting it")
    start.add_argument(
        "--store",
        default=None,
        help="artifact store the controller uses (s3://bucket, file://...; default: the config's `artifacts`, if "
        "set): local data files named in data.* are uploaded there first (data/<sha256>/<file>) and sent as URIs; "
        "with neither, data paths are sent as they are (read on the controller's machine)",
    )
    for name in ("status", "watch", "stop"):
        sub = actions.add_parser(name, help=f"{name} a loop")
        sub.add_argument("loop_id")
        if name == "watch":
            sub.add_argument(
                "--from-sequence",
                type=int,
                default=0,
                metavar="N",
                help="replay the loop's retained events from sequence N (1: from the oldest retained); "
                "default 0: its current state, then live events",
            )
    actions.add_parser("list", help="list loops")
    from cli import report

    report.add_parser(actions)


def _stub(args):
    from montessori.v1 import controller_pb2_grpc

    channel = controller_transport(args).channel(args.controller or service_address("controller"))
    return controller_pb2_grpc.ControllerServiceStub(channel)


def _show(loop) -> dict:
    from montessori.v1 import controller_pb2

    return {
        "loop_id": loop.loop_id,
        "state": controller_pb2.LoopState.Name(loop.state).removeprefix("LOOP_STATE_"),
        "iteration": loop.iteration,
        "stage": loop.stage,
        "rounds_completed": loop.rounds_completed,
        "error": loop.error_message,
        "waiting_for": loop.waiting_for,
        "summary": loop.summary.uri,
        "store": loop.store_uri,
        "age_seconds": round(loop.age_seconds, 1),
    }


def run(args: argparse.Namespace) -> int:
    from montessori.v1 import controller_pb2

    if args.action == "report":  # reads the store, not the controller
        from cli import report

        return report.run(args)
    stub = _stub(args)
    try:
        if args.action == "start":
            from common.config import merge, parse_overrides, read_config_file
            from common.protoconv import loop_spec

            data = merge(read_config_file(args.config) if args.config else {}, parse_overrides(args.set))
            store_uri = args.store or data.get("artifacts")
            if store_uri:
                from common.artifacts import open_store

                data = upload_data(data, open_store(store_uri))
            spec = loop_spec(data)
            loop = stub.StartLoop(
                controller_pb2.StartLoopRequest(request_id=args.request_id, spec=spec), timeout=60
            ).loop
            print(json.dumps(_show(loop), indent=2))
            if not args.watch:
                return 0
            args.loop_id = loop.loop_id
            return watch(stub, args.loop_id, from_sequence=1)  # every event since the start
        if args.action == "status":
            print(
                json.dumps(
                    _show(stub.GetLoop(controller_pb2.GetLoopRequest(loop_id=args.loop_id), timeout=30).loop), indent=2
                )
            )
        elif args.action == "stop":
            print(
                json.dumps(
                    _show(stub.StopLoop(controller_pb2.StopLoopRequest(loop_id=args.loop_id), timeout=30).loop),
                    indent=2,
                )
            )
        elif args.action == "list":
            loops = stub.ListLoops(controller_pb2.ListLoopsRequest(), timeout=30).loops
            print(json.dumps([_show(loop) for loop in loops], indent=2))
        elif args.action == "watch":
            if args.from_sequence < 0:
                print("montessori: error: --from-sequence must be >= 0", file=sys.stderr)
                return EXIT_BAD_INPUT
            return watch(stub, args.loop_id, from_sequence=args.from_sequence)
        return 0
    except grpc.RpcError as err:
        print(f"montessori: error: {err.code().name}: {err.details()}", file=sys.stderr)
        return EXIT_BAD_INPUT if err.code().name in _CLIENT_ERRORS else 1


#: The run config's data fields (``data.<name>``).
DATA_FIELDS = ("seed_path", "reference_path", "eval_path")


def upload_data(document: dict, store) -> dict:
    """``document`` (a run config) with every local file named in ``data.*`` uploaded to ``store`` under
    ``data/<sha256>/<file name>`` (content-addressed: the same file is uploaded once) and replaced by its URI, so a
    controller on another machine reads the user's data from the store. Store URIs are left as they are; a missing
    file is :class:`NotFound` naming ``data.<field>``."""
    import re
    from pathlib import Path

    from common.artifacts import sha256_file
    from common.errors import NotFound
    from services.controller.config import is_store_uri

    data = document.get("data")
    if not isinstance(data, dict):
        return document  # no data section: the controller's defaults (a wrong type is the spec's error to name)
    uploaded = dict(data)
    for name in DATA_FIELDS:
        value = data.get(name)
        if not isinstance(value, str) or not value.strip() or is_store_uri(value):
            continue
        path = Path(value)
        if not path.is_file():
            raise NotFound(f"{value} does not exist", field=f"data.{name}")
        file_name = re.sub(r"[^A-Za-z0-9._=+-]", "-", path.name).lstrip(".")[:100] or "data.jsonl"
        key = f"data/{sha256_file(path)}/{file_name}"
        uploaded[name] = store.uri(key) if store.exists(key) else store.put_file(key, path).uri
    return {**document, "data": uploaded}


def watch(stub, loop_id: str, from_sequence: int = 0) -> int:
    """Follow a loop (from now, or replaying from ``from_sequence``): stage transitions as lines, live progress as
    bars; exit 0 unless it failed."""
    from tqdm import tqdm

    from montessori.v1 import controller_pb2

    bar = None
    last = None
    for response in stub.WatchLoop(controller_pb2.WatchLoopRequest(loop_id=loop_id, from_sequence=from_sequence)):
        event = response.event
        last = event.loop
        if event.kind == controller_pb2.LOOP_EVENT_KIND_PROGRESS:
            label = event.progress.stage
            if bar is None or bar.desc != label:
                if bar is not None:
                    bar.close()
                bar = tqdm(total=event.progress.total, desc=label, leave=False, dynamic_ncols=True, file=sys.stderr)
            bar.total = event.progress.total
            bar.n = event.progress.done
            bar.set_postfix({k: f"{v:.3g}" for k, v in event.progress.metrics.items()}, refresh=True)
            continue
        if bar is not None:
            bar.close()
            bar = None
        metrics = " ".join(f"{k}={v:.4g}" for k, v in sorted(event.metrics.items()))
        where = f"iter {event.iteration} " if event.iteration else ""
        kind = str(event.kind)  # a newer server may send kinds this client does not know
        if event.kind in controller_pb2.LoopEventKind.values():
            kind = controller_pb2.LoopEventKind.Name(event.kind).removeprefix("LOOP_EVENT_KIND_").lower()
        print(f"[{event.sequence:4d}] {where}{event.stage:<18} {kind:<19} {metrics}", flush=True)
    if bar is not None:
        bar.close()
    if last is None:
        return 1
    shown = _show(last)
    print(json.dumps(shown, indent=2))
    return 1 if shown["state"] == "FAILED" else 0
