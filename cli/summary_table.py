"""The end-of-run table (per iteration, then the final comparison)."""

from __future__ import annotations

from rich.console import Console
from rich.table import Table


def _fmt(value, digits: int = 4) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}g}" if abs(value) < 1e-3 and value != 0 else f"{value:.{digits}f}"
    return str(value)


def print_summary(summary: dict, console: Console | None = None) -> None:
    console = console or Console(width=160)
    table = Table(title=f"Montessori-Instruct loop {summary['loop_id']}")
    for column in (
        "iter",
        "candidates",
        "groups",
        "pairs",
        "influence mean",
        "min",
        "max",
        "positive raw",
        "positive centred",
        "DPO reward margin",
        "student ref loss",
        "seconds",
    ):
        table.add_column(column, justify="right")
    for row in summary["iterations"]:
        table.add_row(
            str(row["iteration"]),
            str(row["candidates"]),
            str(row["groups"]),
            str(row["pairs"]),
            _fmt(row["influence_mean"]),
            _fmt(row["influence_min"]),
            _fmt(row["influence_max"]),
            f"{row.get('positive_share_raw', 0.0):.0%}",
            f"{row.get('positive_share_centred', 0.0):.0%}",
            _fmt(row["dpo_reward_margin"]),
            _fmt(row["student_reference_loss"]),
            _fmt(row["seconds"], 1),
        )
    console.print(table)
    evaluation = summary.get("evaluation") or {}
    if evaluation:
        _print_evaluation(evaluation, console)
    console.print(f"wall time {summary['seconds']:.1f} s; summary: {summary['summary_uri']}")


def _print_evaluation(evaluation: dict, console: Console) -> None:
    losses = Table(
        title=f"Held-out loss on {evaluation.get('eval_rows', '?')} rows (lower is better; arms: mean over "
        f"{evaluation.get('draws', 1)} draw(s) of {evaluation.get('train_examples', '?')} examples)"
    )
    losses.add_column("student")
    losses.add_column("loss", justify="right")
    for label, key in (
        ("base (untrained)", "base_student_eval_loss"),
        ("Montessori", "montessori_student_eval_loss"),
        ("Self-Instruct", "baseline_student_eval_loss"),
    ):
        if key in evaluation:
            losses.add_row(label, _fmt(evaluation[key]))
    console.print(losses)
    comparisons = evaluation.get("comparisons") or {}
    if comparisons:
        table = Table(title="Paired differences per held-out row (negative: the first student is better)")
        for column in ("comparison", "mean", "95% interval", "excludes 0", "draws"):
            table.add_column(column, justify="right" if column != "comparison" else "left")
        for name, c in comparisons.items():
            table.add_row(
                name,
                _fmt(c["mean"]),
                f"[{_fmt(c['ci_low'])}, {_fmt(c['ci_high'])}]",
                "yes" if c["excludes_zero"] else "no",
                str(c["units"]),
            )
        console.print(table)
    shift = evaluation.get("teacher_shift")
    if shift:
        table = Table(
            title=f"Teacher shift: {shift['samples']} fresh examples per teacher version, scored on one student"
        )
        for column in ("version", "influence mean", "95% interval", "helpful share", "Spearman with length"):
            table.add_column(column, justify="right")
        for v in shift["versions"]:
            table.add_row(
                v["teacher"],
                _fmt(v["influence_mean"]),
                f"[{_fmt(v['ci_low'])}, {_fmt(v['ci_high'])}]",
                f"{v['positive_share']:.0%}",
                _fmt(v["length_spearman"], 2),
            )
        console.print(table)
