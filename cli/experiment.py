"""``montessori experiment``: one loop per seed (in process, or on the controller), pooled into ``experiment.json``
and a report. Each seed's loop id is fixed (``<name>-seed<N>``), so a rerun resumes every completed stage and a
finished loop is read back, not rerun."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from common.errors import FailedPrecondition, InvalidArgument


def add_parser(commands) -> None:
    sub = commands.add_parser(
        "experiment",
        help="Montessori vs Self-Instruct vs base over several seeds, with intervals.",
        description=__doc__.splitlines()[0],
    )
    sub.add_argument("--config", help="YAML or TOML run config (as for `montessori run`)")
    sub.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config field")
    sub.add_argument("--seeds", default="0,1,2", help="comma-separated loop seeds (default 0,1,2)")
    sub.add_argument("--out", default=None, help="report folder (default reports/experiment-<name>)")
    sub.add_argument(
        "--controller",
        default=None,
        help="run each seed's loop on this controller (host:port) instead of in this process; the "
        "config's artifacts must name the store the services share",
    )
    from common.transport import add_client_flags

    add_client_flags(sub)
    sub.add_argument("--no-progress", action="store_true", help="no progress bars")
    judge = sub.add_mutually_exclusive_group()
    judge.add_argument(
        "--judge-model",
        help="also judge Montessori vs Self-Instruct (draw 0 of each seed) pairwise with "
        "this local model folder (a 135M judge checks mechanics only)",
    )
    judge.add_argument("--judge-endpoint", help="... or with an OpenAI-compatible endpoint (e.g. a vLLM server's /v1)")
    sub.add_argument("--judge-endpoint-model", help="model name the judge endpoint serves")
    sub.add_argument("--judge-rows", type=int, default=40, help="held-out rows judged per seed (default 40; 0: all)")


def parse_seeds(text: str) -> list[int]:
    try:
        seeds = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise InvalidArgument(f"must be comma-separated integers, got {text!r}", field="--seeds") from None
    if not seeds or len(set(seeds)) != len(seeds) or any(not 0 <= s < 2**31 for s in seeds):
        raise InvalidArgument("must list distinct seeds in 0..2^31-1", field="--seeds")
    return seeds


def _seed_overrides(args: argparse.Namespace, name: str, seed: int) -> list[str]:
    return [*args.set, f"seed={seed}", f"loop_id={name}-seed{seed}", "continuous=false"]


def _finished(store, config) -> dict | None:
    """The summary of this loop if it already succeeded with this very config (a rerun reads it back)."""
    from common.config import config_digest

    prefix = f"loops/{config.loop_id}"
    if not store.exists(f"{prefix}/state.json") or not store.exists(f"{prefix}/summary.json"):
        return None
    state = store.get_json(f"{prefix}/state.json")
    if state.get("status") != "succeeded" or state.get("config_sha256") != config_digest(config):
        return None
    summary = store.get_json(f"{prefix}/summary.json")
    summary["summary_uri"] = store.uri(f"{prefix}/summary.json")
    return summary


def _run_in_process(config, progress) -> dict:
    from cli.local import local_runner

    return local_runner(config, progress=progress).run()


def _run_on_controller(args: argparse.Namespace, overrides: list[str], loop_id: str, store) -> dict:
    """StartLoop (idempotent on the loop id), then poll until the loop ends; the summary is read from the store."""
    import grpc

    from common.config import merge, parse_overrides, read_config_file
    from common.protoconv import loop_spec
    from montessori.v1 import controller_pb2, controller_pb2_grpc

    data = merge(read_config_file(args.config) if args.config else {}, parse_overrides(overrides))
    from common.transport import controller_transport

    with controller_transport(args).channel(args.controller) as channel:
        stub = controller_pb2_grpc.ControllerServiceStub(channel)
        try:
            stub.StartLoop(controller_pb2.StartLoopRequest(request_id=loop_id, spec=loop_spec(data)), timeout=120)
            while True:
                loop = stub.GetLoop(controller_pb2.GetLoopRequest(loop_id=loop_id), timeout=60).loop
                if loop.state != controller_pb2.LOOP_STATE_RUNNING:
                    break
                time.sleep(5)
        except grpc.RpcError as err:
            raise FailedPrecondition(
                f"controller {args.controller}: {err.code().name}: {err.details()}", field="--controller"
            ) from None
    if loop.state != controller_pb2.LOOP_STATE_SUCCEEDED:
        raise FailedPrecondition(
            f"loop {loop_id} ended {controller_pb2.LoopState.Name(loop.state)}: {loop.error_message}",
            field="--controller",
        )
    summary = store.get_json(f"loops/{loop_id}/summary.json")
    summary["summary_uri"] = store.uri(f"loops/{loop_id}/summary.json")
    return summary


def _student_dir(store, student: dict) -> str:
    """The folder of an evaluated student (its evaluation manifest names the model it loaded)."""
    manifest = store.get_json(store.key_of(student["losses_uri"]).rsplit("/", 1)[0] + "/manifest.json")
    base = manifest["inputs"]["model"]["base"]
    return str(store.local_path(store.key_of(base["uri"]))) if "uri" in base else base["path"]


def _judge(args: argparse.Namespace, store, summaries: dict[int, dict], config) -> dict:
    """Win rate of each seed's Montessori student (draw 0) against its Self-Instruct student (draw 0), and pooled."""
    from cli.judge import judge_api_key, judge_students, settings_from_args
    from common.stats import bootstrap_mean
    from evaluation.judge import make_judge

    args.max_rows, args.max_new_tokens = args.judge_rows, 128  # the flags `montessori judge` reads
    settings = settings_from_args(args)
    judge = make_judge(settings, api_key=judge_api_key())
    per_seed, scores = {}, []
    for seed, summary in sorted(summaries.items()):
        students = summary["evaluation"]["students"]
        result = judge_students(
            _student_dir(store, students["montessori-0"]),
            _student_dir(store, students["self_instruct-0"]),
            config.data.eval_path,
            settings,
            chat_template=config.models.student_chat_template,
            judge=judge,
        )
        scores += [record["score"] for record in result["rows"]]
        per_seed[str(seed)] = {k: v for k, v in result.items() if k != "rows"}
    pooled = bootstrap_mean(
        scores, resamples=config.evaluation.bootstrap_resamples, confidence=config.evaluation.confidence
    )
    return {"per_seed": per_seed, "pooled_win_rate": pooled.to_dict(), "judge": judge.describe()}


def run(args: argparse.Namespace) -> int:
    from cli.report import render_experiment_report
    from common.artifacts import open_store
    from common.config import load_config, to_dict
    from common.logs import configure_logging, get_logger
    from common.progress import TqdmProgress
    from services.controller.config import RunConfig
    from services.controller.experiment import aggregate

    configure_logging()
    log = get_logger("montessori.experiment")
    seeds = parse_seeds(args.seeds)
    base = load_config(RunConfig, args.config, args.set)
    if base.evaluation.baseline is False:
        raise InvalidArgument("an experiment compares with Self-Instruct: must be true", field="evaluation.baseline")
    name = base.name
    store = open_store(base.artifacts)
    progress = TqdmProgress(enabled=not args.no_progress and sys.stderr.isatty())
    summaries = {}
    for seed in seeds:
        overrides = _seed_overrides(args, name, seed)
        config = load_config(RunConfig, args.config, overrides)
        summary = _finished(store, config)
        log.info("seed reused" if summary else "seed started", extra={"loop_id": config.loop_id, "stage": "experiment"})
        if summary is None:
            summary = (
                _run_on_controller(args, overrides, config.loop_id, store)
                if args.controller
                else _run_in_process(config, progress)
            )
        summaries[seed] = summary
    experiment = aggregate(
        store,
        name,
        summaries,
        config={"run": to_dict(base), "seeds": seeds},
        resamples=base.evaluation.bootstrap_resamples,
        confidence=base.evaluation.confidence,
    )
    if args.judge_model or args.judge_endpoint:
        experiment["judge"] = _judge(args, store, summaries, base)
    ref = store.put_json(f"experiments/{name}/experiment.json", experiment)
    out = Path(args.out or Path("reports") / f"experiment-{name}")
    out.mkdir(parents=True, exist_ok=True)
    (out / "experiment.json").write_text(json.dumps(experiment, indent=2, sort_keys=True) + "\n")
    paths = render_experiment_report(experiment, out, summaries={str(s): v for s, v in summaries.items()}, store=store)
    print(
        json.dumps(
            {
                "experiment": ref.uri,
                "report_html": str(paths["html"]),
                "report_md": str(paths["md"]),
                "verdict": experiment["verdict"],
            },
            indent=2,
        )
    )
    return 0
