"""``montessori judge``: the pairwise win rate of student A (Montessori) against student B (Self-Instruct) on
held-out instructions, each judged in both orders (see :mod:`evaluation.judge`; a 135M judge checks the
mechanics only, point ``--judge-endpoint`` at a strong model to measure)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from common.errors import InvalidArgument, MontessoriError, NotFound

#: The setting (or runtime field) each flag sets, so that an error names what the user typed.
_FLAGS = {
    "model": "--judge-model",
    "judge.model": "--judge-model",
    "endpoint": "--judge-endpoint",
    "judge.endpoint": "--judge-endpoint",
    "endpoint_model": "--judge-endpoint-model",
    "max_rows": "--max-rows",
    "max_new_tokens": "--max-new-tokens",
    "a": "--a",
    "b": "--b",
    "rows": "--rows",
}


def add_parser(commands) -> None:
    sub = commands.add_parser(
        "judge",
        help="Win rate of student A against student B, judged pairwise in both orders.",
        description=__doc__.splitlines()[0],
    )
    sub.add_argument("--a", required=True, help="student A model folder (the Montessori student)")
    sub.add_argument("--b", required=True, help="student B model folder (the Self-Instruct student)")
    judge = sub.add_mutually_exclusive_group(required=True)
    judge.add_argument("--judge-model", help="local HF model folder used as the judge")
    judge.add_argument(
        "--judge-endpoint",
        help="OpenAI-compatible base URL used as the judge, e.g. http://host:8000/v1 (a vLLM server); "
        "API key from MONTESSORI_JUDGE_API_KEY",
    )
    sub.add_argument("--judge-endpoint-model", help="model name the endpoint serves (required with --judge-endpoint)")
    sub.add_argument("--rows", default="data/eval.jsonl", help="held-out rows (JSONL; default data/eval.jsonl)")
    sub.add_argument(
        "--max-rows", type=int, default=40, help="rows judged, spread evenly over the file (default 40; 0: all rows)"
    )
    sub.add_argument(
        "--max-new-tokens", type=int, default=128, help="token budget of each student's answer (default 128)"
    )
    sub.add_argument("--out", help="also write the full result (with per-row records) to this JSON file")


def judge_api_key() -> str | None:
    """``MONTESSORI_JUDGE_API_KEY``: the bearer token of the judge endpoint (never logged or written)."""
    from common.envs import Env

    return Env.read().judge_api_key


def judge_students(
    a_dir: str | Path,
    b_dir: str | Path,
    rows_path: str | Path,
    settings,
    *,
    chat_template: str | None = None,
    judge=None,
) -> dict:
    """Answer the held-out rows with both students, judge every pair in both orders, and return the figures of
    :func:`evaluation.judge.judge_pair` with what was compared. ``chat_template`` overrides the students'
    own (a run's ``models.student_chat_template``; trained students already carry theirs). ``judge``: a judge
    already built (an experiment reuses one across seeds); default: the one ``settings`` name, built here."""
    from common.config import to_dict
    from common.jsonl import read_instruction_rows
    from common.models import ModelRef, model_dir
    from evaluation.judge import generate_answers, judge_pair, make_judge, select_rows

    model_dir(a_dir, field="a")
    model_dir(b_dir, field="b")
    if judge is None and settings.model is not None:  # fail before the students answer, not after
        model_dir(settings.model, field="judge.model")
    if not Path(rows_path).is_file():
        raise NotFound(f"no held-out rows file at {rows_path}", field="rows")
    all_rows = read_instruction_rows(rows_path)
    indices = select_rows(all_rows, settings.max_rows)
    rows = [all_rows[i] for i in indices]
    # One model in memory at a time: A's answers, then B's, then the judge.
    answers_a = generate_answers(ModelRef(str(a_dir), chat_template=chat_template), rows, settings, field="a")
    answers_b = generate_answers(ModelRef(str(b_dir), chat_template=chat_template), rows, settings, field="b")
    judge = judge or make_judge(settings, api_key=judge_api_key())
    result = judge_pair(rows, answers_a, answers_b, judge, settings, indices=indices)
    return {
        **result,
        "a": str(a_dir),
        "b": str(b_dir),
        "rows_path": str(rows_path),
        "judge": judge.describe(),
        "settings": to_dict(settings),
    }


def settings_from_args(args: argparse.Namespace):
    """The judge settings the flags ask for; a bad value is :class:`InvalidArgument` naming its flag."""
    from evaluation.judge import JudgeSettings

    if args.judge_endpoint is not None and not args.judge_endpoint_model:
        raise InvalidArgument(
            "names the model the endpoint serves; required with --judge-endpoint", field="--judge-endpoint-model"
        )
    if args.max_rows < 0:
        raise InvalidArgument("must be >= 0 (0: all rows)", field="--max-rows")
    try:
        return JudgeSettings(
            model=args.judge_model,
            endpoint=args.judge_endpoint,
            endpoint_model=args.judge_endpoint_model if args.judge_endpoint else None,
            max_rows=args.max_rows or None,
            max_new_tokens=args.max_new_tokens,
        )
    except MontessoriError as err:
        raise _with_flag(err) from None


def run(args: argparse.Namespace) -> int:
    settings = settings_from_args(args)
    try:
        result = judge_students(args.a, args.b, args.rows, settings)
    except MontessoriError as err:
        raise _with_flag(err) from None
    if args.out:
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        staged = out.with_name(out.name + ".tmp")
        staged.write_text(json.dumps(result, indent=2, sort_keys=True) + "\n")
        staged.replace(out)  # atomic: a reader never sees half a file
    summary = {key: value for key, value in result.items() if key != "rows"}
    if args.out:
        summary["out"] = str(args.out)
    print(json.dumps(summary, indent=2, sort_keys=True))
    return 0


def _with_flag(err: MontessoriError) -> MontessoriError:
    """The same error naming the command-line flag instead of the setting."""
    flag = _FLAGS.get(err.field or "")
    return type(err)(err.message, field=flag) if flag else err
