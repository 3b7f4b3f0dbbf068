"""One loop's wall time in process vs through the five services, stage by stage, in one run.

Both runs use the same config and seed (so the same work); the services run starts the five
services as local processes on free loopback ports with their own local store.
Usage: python bench/loop.py [--config configs/tiny.yaml]
"""

from __future__ import annotations

import argparse
import json
import socket
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import grpc

from cli.local import local_runner
from cli.local_services import ORDER, start_services, stop_services
from common.artifacts import LocalArtifactStore
from common.config import load_config, read_config_file
from common.envs import apply_offline_defaults
from common.protoconv import loop_spec
from montessori.v1 import controller_pb2, controller_pb2_grpc
from services.controller.config import RunConfig


def free_ports(n: int) -> list[int]:
    sockets = [socket.socket() for _ in range(n)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


def stage_seconds(store: LocalArtifactStore, loop_id: str) -> dict[str, float]:
    """Worker-side seconds of every stage, from the manifests (keyed by the stage path in the loop)."""
    out = {}
    for key in store.list(f"loops/{loop_id}"):
        if key.endswith("/manifest.json"):
            out[key.removeprefix(f"loops/{loop_id}/").removesuffix("/manifest.json")] = store.get_json(key)["seconds"]
    return out


def main() -> None:
    apply_offline_defaults()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="configs/tiny.yaml")
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        config = load_config(RunConfig, args.config, [f"artifacts={tmp / 'inproc'}", "loop_id=bench"])
        start = time.perf_counter()
        local_runner(config).run()
        inproc_wall = time.perf_counter() - start
        inproc = stage_seconds(LocalArtifactStore(tmp / "inproc"), "bench")

        ports = dict(zip(ORDER, free_ports(len(ORDER))))
        processes = start_services(artifacts=str(tmp / "services"), ports=ports, log_dir=tmp / "logs")
        try:
            stub = controller_pb2_grpc.ControllerServiceStub(grpc.insecure_channel(f"127.0.0.1:{ports['controller']}"))
            spec = loop_spec(read_config_file(args.config))
            start = time.perf_counter()
            loop = stub.StartLoop(controller_pb2.StartLoopRequest(spec=spec)).loop
            observed: dict[str, float] = defaultdict(float)
            began = {}
            for response in stub.WatchLoop(controller_pb2.WatchLoopRequest(loop_id=loop.loop_id, from_sequence=1)):
                event = response.event
                name = f"iter-{event.iteration}/{event.stage}" if event.iteration else event.stage
                if event.kind == controller_pb2.LOOP_EVENT_KIND_STAGE_STARTED:
                    began[name] = time.perf_counter()
                elif event.kind == controller_pb2.LOOP_EVENT_KIND_STAGE_FINISHED and name in began:
                    observed[name] += time.perf_counter() - began.pop(name)
            services_wall = time.perf_counter() - start
            services = stage_seconds(LocalArtifactStore(tmp / "services"), loop.loop_id)
        finally:
            stop_services(processes)
    stages = sorted(set(inproc) | set(services))
    print(f"config={args.config}")
    print(f"{'stage':<34} {'in-process s':>13} {'service s':>10} {'observed s':>11}")
    # The controller names loop-level stages without their folder.
    event_name = {
        "baseline/train-data": "baseline-data",
        "baseline/student": "baseline-student",
        "evaluation/montessori-influence": "montessori-influence",
        "evaluation/baseline-influence": "baseline-influence",
    }
    for stage in stages:
        key = event_name.get(stage, stage)
        print(
            f"{stage:<34} {inproc.get(stage, 0):>13.2f} {services.get(stage, 0):>10.2f} {observed.get(key, 0):>11.2f}"
        )
    overhead = services_wall - inproc_wall
    print(
        f"{'loop wall time':<34} {inproc_wall:>13.2f} {services_wall:>10.2f}   overhead {overhead:+.2f} s "
        f"({100 * overhead / services_wall:+.1f}% of the services run)"
    )
    out = Path(args.out or f"bench/results/loop-{Path(args.config).stem}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(
        json.dumps(
            {
                "config": args.config,
                "in_process_wall": inproc_wall,
                "services_wall": services_wall,
                "stages": {s: {"in_process": inproc.get(s), "service": services.get(s)} for s in stages},
            },
            indent=2,
        )
    )
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
