"""``montessori loop report``: a loop summary, or an experiment, rendered as a report.

Writes ``report.md`` with PNG charts beside it and a self-contained ``report.html`` (the same
PNGs as base64 data URIs). Every summary section is optional (a running loop has rounds but no
evaluation yet); a missing one is reported as "not available", never as an error. Held-out
differences are "first − second" in loss (``montessori_vs_base`` = Montessori − base), so a
NEGATIVE value means the first-named student is better.

This package holds the command (``add_parser``, ``run``) and re-exports the report API from its
modules: ``sources`` (loading summaries and rows), ``wording`` (numbers, CIs and sentences as text),
``document`` (the Markdown/HTML document and its atomic writing), ``charts`` (matplotlib figures),
``loop`` (one loop's report) and ``experiment`` (an experiment's report).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from cli.report.document import Doc, Figure
from cli.report.experiment import render_experiment_report
from cli.report.loop import render_loop_report, rounds_table
from cli.report.sources import load_experiment_summaries, load_summary
from cli.report.wording import EFFECTS, NA, NULLS, ci_verdict, comparison_sentence

__all__ = [
    "EFFECTS",
    "NA",
    "NULLS",
    "Doc",
    "Figure",
    "add_parser",
    "ci_verdict",
    "comparison_sentence",
    "load_experiment_summaries",
    "load_summary",
    "render_experiment_report",
    "render_loop_report",
    "rounds_table",
    "run",
]


def add_parser(loop_actions) -> None:
    """``montessori loop report <loop-id-or-summary-uri> [--out DIR] [--artifacts STORE]``."""
    sub = loop_actions.add_parser("report", help="render a loop's summary as report.md + report.html with charts")
    sub.add_argument(
        "source", metavar="LOOP_OR_SUMMARY", help="a loop id, or a summary.json path / file:// / s3://bucket/key URI"
    )
    sub.add_argument("--out", default=None, help="output folder (default reports/<loop-id>)")
    sub.add_argument(
        "--artifacts", default=None, help="artifact store holding the loop (default MONTESSORI_ARTIFACTS_DIR)"
    )


def run(args: argparse.Namespace) -> int:
    summary, store = load_summary(args.source, args.artifacts)
    out = Path(args.out or Path("reports") / str(summary.get("loop_id") or "loop"))
    paths = render_loop_report(summary, out, store=store)
    print(
        json.dumps(
            {"html": str(paths["html"]), "md": str(paths["md"]), "images": [str(p) for p in paths["images"]]}, indent=2
        )
    )
    return 0
