"""``montessori``: run a whole loop, or one stage on artifacts from disk.

Every subcommand reads the same typed config (``--config`` YAML/TOML, then
``--set key=value`` overrides). A bad input is reported on one line naming the
field or file:line, with exit code 2, and leaves no partial artifact.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from common.envs import apply_offline_defaults

EXIT_BAD_INPUT = 2


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="montessori", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)

    def command(name: str, help: str) -> argparse.ArgumentParser:
        sub = commands.add_parser(name, help=help, description=help)
        sub.add_argument("--config", help="YAML or TOML config file (default: the embedded defaults)")
        sub.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config field")
        sub.add_argument("--no-progress", action="store_true", help="no progress bars")
        return sub

    sub = command("run", "Run the whole loop (K iterations, then evaluation) and print the summary table.")
    sub.add_argument("--report", default=None, help="report folder (default reports/<loop-id>)")
    command("config", "Print the resolved config as YAML, every field with its help.")
    sub = command("generate", "Teacher: write a candidate set (instructions + responses).")
    sub.add_argument("--out", required=True, help="output folder (candidates.jsonl + manifest.json)")
    sub.add_argument(
        "--adapter", action="append", default=[], help="LoRA adapter folder(s) applied to the teacher, in order"
    )
    size = sub.add_mutually_exclusive_group(required=True)
    size.add_argument("--prompts", type=int, help="number of synthesis prompts (prompt groups)")
    size.add_argument("--examples", type=int, help="number of examples to keep")
    sub = command("train-student", "Trainer: SFT of the student on a candidate set.")
    sub.add_argument("--candidates", required=True, help="candidates.jsonl")
    sub.add_argument("--out", required=True, help="output folder (model/ + manifest.json)")
    sub.add_argument("--student", help="student model folder (default: models.student)")
    sub.add_argument("--warmup", action="store_true", help="use the warm-up settings and save the AdamW state")
    sub = command("score", "Influence: score candidates on a warmed-up student.")
    sub.add_argument("--warmup", required=True, help="warm-up model folder (from train-student --warmup)")
    sub.add_argument("--candidates", required=True, help="candidates.jsonl")
    sub.add_argument("--out", required=True, help="output folder (scores.jsonl + manifest.json)")
    sub = command("pairs", "Preference: assemble DPO pairs from candidates and scores.")
    sub.add_argument("--candidates", required=True, help="candidates.jsonl")
    sub.add_argument("--scores", required=True, help="scores.jsonl")
    sub.add_argument("--out", required=True, help="output folder (pairs.jsonl + manifest.json)")
    sub = command("train-teacher", "Trainer: DPO of the teacher on preference pairs.")
    sub.add_argument("--pairs", required=True, help="pairs.jsonl")
    sub.add_argument("--out", required=True, help="output folder (adapter/ or model/ + manifest.json)")
    sub.add_argument("--adapter", action="append", default=[], help="LoRA adapter folder(s) of the current teacher")
    sub = command("evaluate", "Held-out loss of one or more students on data.eval_path.")
    sub.add_argument("--student", action="append", required=True, help="student model folder (repeatable)")
    from cli import artifacts, experiment, judge, loop_client, models, plan, serve

    experiment.add_parser(commands)
    judge.add_parser(commands)
    serve.add_parser(commands)
    loop_client.add_parser(commands)
    artifacts.add_parser(commands)
    models.add_parser(commands)
    plan.add_parser(commands)
    return parser


def main(argv: list[str] | None = None) -> int:
    apply_offline_defaults()
    from common.errors import MontessoriError

    try:
        # argparse reports its own errors (usage, then one line) and exits 2; a flag of another service given to
        # `montessori serve` is a MontessoriError (cli.serve.ServiceParser), one line like the rest.
        args = make_parser().parse_args(argv)
        return _dispatch(args)
    except MontessoriError as err:
        print(f"montessori: error: {err}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        print("montessori: interrupted", file=sys.stderr)
        return 130
    except ModuleNotFoundError as err:
        if not err.name or err.name.split(".")[0] not in _EXTRAS_PACKAGES:
            raise  # a broken install of our own code, not a missing extra: the traceback is the report
        print(f"montessori: error: {_missing_extra(err.name)}", file=sys.stderr)
        return EXIT_BAD_INPUT


#: Packages an install without the ``worker`` (or ``client``) extra lacks: commands that need one say which extra.
_EXTRAS_PACKAGES = {
    "torch": "worker",
    "transformers": "worker",
    "trl": "worker",
    "peft": "worker",
    "datasets": "worker",
    "accelerate": "worker",
    "gguf": "worker",
    "rouge_score": "worker",
    "prometheus_client": "worker",
    "kubernetes": "worker",
    "vllm": "vllm",
    "matplotlib": "client",
    "numpy": "client",
}


def _missing_extra(module: str) -> str:
    extra = _EXTRAS_PACKAGES[module.split(".")[0]]
    return f"this command needs {module.split('.')[0]}, which this install lacks: pip install 'montessori[{extra}]'"


def _dispatch(args: argparse.Namespace) -> int:
    if args.command == "serve":
        from cli import serve

        return serve.run(args)
    if args.command == "loop":
        from cli import loop_client

        return loop_client.run(args)
    if args.command == "artifacts":
        from cli import artifacts

        return artifacts.run(args)
    if args.command == "models":
        from cli import models

        return models.run(args)
    if args.command == "experiment":
        from cli import experiment

        return experiment.run(args)
    if args.command == "judge":
        from cli import judge

        return judge.run(args)
    if args.command == "plan":
        from cli import plan

        return plan.run(args)
    from common.config import load_config
    from common.logs import configure_logging
    from common.progress import TqdmProgress
    from services.controller.config import RunConfig

    configure_logging()
    config = load_config(RunConfig, args.config, args.set)
    progress = TqdmProgress(enabled=not args.no_progress and sys.stderr.isatty())

    from cli.local import resolved

    if args.command == "config":
        from cli.config_doc import render_yaml

        print(render_yaml(resolved(config)))
        return 0
    if args.command == "run":
        from cli.local import local_runner
        from cli.summary_table import print_summary

        runner = local_runner(config, progress=progress)
        summary = runner.run()
        print_summary(summary)
        from cli.report import render_loop_report

        paths = render_loop_report(
            summary, Path(args.report or Path("reports") / summary["loop_id"]), store=runner.store
        )
        print(f"report: {paths['html']} (and {paths['md']})")
        return 0
    from cli import stage_commands

    return stage_commands.run(args, config, progress)


if __name__ == "__main__":
    sys.exit(main())
