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
    for column in ("iter", "candidates", "groups", "pairs", "influence mean", "min", "max", "positive raw",
                   "positive centred", "DPO reward margin", "student ref loss", "seconds"):
        table.add_column(column, justify="right")
    for row in summary["iterations"]:
        table.add_row(str(row["iteration"]), str(row["candidates"]), str(row["groups"]), str(row["pairs"]),
                      _fmt(row["influence_mean"]), _fmt(row["influence_min"]), _fmt(row["influence_max"]),
                      f"{row.get('positive_share_raw', 0.0):.0%}", f"{row.get('positive_share_centred', 0.0):.0%}",
                      _fmt(row["dpo_reward_margin"]), _fmt(row["student_reference_loss"]), _fmt(row["seconds"], 1))
    console.print(table)
    final = Table(title="Held-out evaluation (lower loss is better)")
    final.add_column("metric")
    final.add_column("value", justify="right")
    for key, value in summary["evaluation"].items():
        final.add_row(key, _fmt(value) if not isinstance(value, dict) else ", ".join(f"{k}={v}" for k, v in value.items()))
    console.print(final)
    console.print(f"wall time {summary['seconds']:.1f} s; summary: {summary['summary_uri']}")
