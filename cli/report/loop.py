"""The sections of one loop's report: the per-round table, influence histograms, the share of helpful candidates,
teacher DPO, the student's reference loss, the held-out comparison, the teacher shift and the teacher-version
lineage; and ``render_loop_report``, which writes them as a report folder. The sections are shared with the
experiment report, which shows each of its loops with them.
"""

from __future__ import annotations

from pathlib import Path

from cli.report.charts import heldout_figure, influence_histograms, series_figure, shift_figure
from cli.report.document import Doc, write_report
from cli.report.sources import read_rows
from cli.report.wording import (
    EFFECTS,
    NA,
    NULLS,
    ci_range,
    ci_verdict,
    comparison_label,
    comparison_sentence,
    number,
    percent,
)


def rounds_table(iterations: list[dict]) -> tuple[list[str], list[list]]:
    """The per-round table: one row per finished round."""
    headers = [
        "round",
        "candidates",
        "groups",
        "pairs",
        "influence mean",
        "min",
        "max",
        "positive raw",
        "positive centred",
        "DPO margin",
        "DPO accuracy",
        "held-out margin",
        "held-out accuracy",
        "held-out pairs",
        "student ref loss",
        "teacher",
        "influence mode",
        "seconds",
    ]
    rows = [
        [
            r.get("iteration"),
            r.get("candidates"),
            r.get("groups"),
            r.get("pairs"),
            r.get("influence_mean"),
            r.get("influence_min"),
            r.get("influence_max"),
            percent(r.get("positive_share_raw")),
            percent(r.get("positive_share_centred")),
            r.get("dpo_reward_margin"),
            r.get("dpo_reward_accuracy"),
            r.get("heldout_reward_margin"),
            r.get("heldout_reward_accuracy"),
            r.get("heldout_pairs"),
            r.get("student_reference_loss"),
            r.get("teacher_version") or "-",
            r.get("influence_mode") or "-",
            r.get("seconds"),
        ]
        for r in iterations
    ]
    return headers, rows


def loop_status(summary: dict) -> str:
    if summary.get("status"):
        return summary["status"]
    if summary.get("stopped"):
        return "stopped"
    return "succeeded" if summary.get("evaluation") else "running"


def _influence_values(rows: list[dict]) -> tuple[list[float], list[float]]:
    """Raw (official) and centred scores; older rows carry only ``influence`` (raw)."""
    raw = [r.get("influence_raw", r.get("influence")) for r in rows]
    centred = [r.get("influence_centred") for r in rows]
    keep = lambda values: [float(v) for v in values if isinstance(v, (int, float))]  # noqa: E731
    return keep(raw), keep(centred)


def loop_sections(doc: Doc, summary: dict, store, *, level: int, prefix: str) -> None:
    iterations = sorted(summary.get("iterations") or [], key=lambda r: r.get("iteration", 0))
    loop_uri = summary.get("store") or ""
    rounds = [r.get("iteration") for r in iterations]
    sub = level + 1

    doc.heading(level, "Rounds")
    if iterations:
        doc.table(*rounds_table(iterations))
    else:
        doc.para(f"Per-round results: {NA} (no round has finished).")

    doc.heading(sub, "Influence per round")
    by_round, missing = [], []
    for r in iterations:
        uri = r.get("scores_uri") or (f"{loop_uri}/iter-{r.get('iteration')}/scores/scores.jsonl" if loop_uri else None)
        rows, why = read_rows(uri, store)
        raw, centred = _influence_values(rows or [])
        if raw:
            by_round.append((r.get("iteration"), raw, centred))
        else:
            missing.append(f"round {r.get('iteration')}: scores {NA} ({why or 'no scores'})")
    doc.para(
        "Per-candidate local data influence (positive = the candidate lowered the student's reference loss). "
        "Raw scores include the step every candidate shares; centred scores remove it."
    )
    if by_round:
        doc.figure(influence_histograms(f"{prefix}influence_histograms.png", by_round))
    else:
        doc.para(f"Influence histograms: {NA}.")
    doc.bullets(missing)

    doc.heading(sub, "Share of helpful candidates")
    fig = series_figure(
        f"{prefix}positive_share.png",
        "share of candidates with positive influence per round",
        [
            (
                "positive influence",
                "share of candidates",
                {
                    "raw": (rounds, [r.get("positive_share_raw") for r in iterations]),
                    "centred": (rounds, [r.get("positive_share_centred") for r in iterations]),
                },
            )
        ],
    )
    doc.figure(fig, "Positive share per round")

    doc.heading(sub, "Teacher DPO")
    fig = series_figure(
        f"{prefix}dpo.png",
        "DPO reward margin and accuracy per round",
        [
            (
                "reward margin",
                "chosen − rejected reward",
                {
                    "train": (rounds, [r.get("dpo_reward_margin") for r in iterations]),
                    "held-out": (rounds, [r.get("heldout_reward_margin") for r in iterations]),
                },
            ),
            (
                "reward accuracy",
                "share of pairs ranked right",
                {
                    "train": (rounds, [r.get("dpo_reward_accuracy") for r in iterations]),
                    "held-out": (rounds, [r.get("heldout_reward_accuracy") for r in iterations]),
                },
            ),
        ],
    )
    doc.figure(fig, "DPO reward margin and accuracy")

    doc.heading(sub, "Student reference loss")
    fig = series_figure(
        f"{prefix}student_loss.png",
        "student reference loss per round",
        [
            (
                "student reference loss",
                "loss",
                {"student": (rounds, [r.get("student_reference_loss") for r in iterations])},
            )
        ],
    )
    doc.figure(fig, "Student reference loss")

    _evaluation_section(doc, summary.get("evaluation") or {}, level=level, prefix=prefix)
    _teacher_shift_section(doc, (summary.get("evaluation") or {}).get("teacher_shift"), level=level, prefix=prefix)

    doc.heading(level, "Teacher-version lineage")
    if iterations:
        short = lambda uri: _relative(uri, loop_uri)  # noqa: E731
        doc.para(f"Which teacher wrote each round's training data; ./ paths are under {loop_uri or 'the loop'}.")
        doc.table(
            ["round", "teacher version", "adapters", "training data", "scores", "pairs"],
            [
                [
                    r.get("iteration"),
                    r.get("teacher_version") or "-",
                    ", ".join(short(a) for a in r.get("teacher_adapters") or []) or "-",
                    short(r.get("train_data_uri")),
                    short(r.get("scores_uri")),
                    short(r.get("pairs_uri")),
                ]
                for r in iterations
            ],
        )
    else:
        doc.para(f"Lineage: {NA}.")


def _relative(uri: str | None, base: str) -> str:
    """``uri`` shortened to ``./rest`` when it lies under ``base`` (the loop's URIs are long and alike)."""
    if not uri:
        return "-"
    return f"./{uri[len(base) + 1 :]}" if base and uri.startswith(base + "/") else uri


def _students(evaluation: dict) -> dict[str, dict]:
    """Each student's held-out loss; older summaries carry only the flat ``*_student_eval_loss`` keys."""
    if evaluation.get("students"):
        return dict(sorted(evaluation["students"].items()))
    flat = {
        "base": "base_student_eval_loss",
        "montessori": "montessori_student_eval_loss",
        "self_instruct": "baseline_student_eval_loss",
    }
    return {name: {"loss": evaluation[key]} for name, key in flat.items() if evaluation.get(key) is not None}


def _evaluation_section(doc: Doc, evaluation: dict, *, level: int, prefix: str) -> None:
    doc.heading(level, "Held-out comparison")
    students = _students(evaluation)
    comparisons = evaluation.get("comparisons") or {}
    if not students and not comparisons:
        doc.para(f"Held-out evaluation: {NA} (the loop has not been evaluated yet).")
        return
    doc.para(
        f"Held-out rows: {number(evaluation.get('eval_rows'))}; "
        f"data draws per arm: {number(evaluation.get('draws'))}. "
        "Lower loss is better. Differences are first − second in held-out loss: a NEGATIVE difference means the "
        "first-named student (Montessori in montessori_vs_*) is better. Nulls compare students that differ only by "
        "chance; an effect means something only when it is clearly larger than the nulls."
    )
    if students:
        doc.table(
            ["student", "held-out loss", "teacher version", "training data"],
            [
                [name, s.get("loss"), s.get("teacher_version") or "-", s.get("train_data_uri") or "-"]
                for name, s in students.items()
            ],
        )
    keys = [k for k in EFFECTS if k in comparisons] + [k for k in NULLS if k in comparisons]
    keys += sorted(k for k in comparisons if k not in keys)
    doc.figure(heldout_figure(f"{prefix}heldout.png", students, {k: comparisons[k] for k in keys}))
    if keys:
        doc.table(
            ["comparison", "mean", "CI", "units", "rows", "vs 0"],
            [
                [
                    comparison_label(k),
                    comparisons[k].get("mean"),
                    ci_range(comparisons[k]),
                    comparisons[k].get("units"),
                    comparisons[k].get("rows"),
                    ci_verdict(comparisons[k].get("ci_low"), comparisons[k].get("ci_high")),
                ]
                for k in keys
            ],
        )
        doc.bullets(comparison_sentence(k, comparisons[k]) for k in keys)
    else:
        doc.para(f"Comparisons with confidence intervals: {NA}.")
    per_category = evaluation.get("per_category") or {}
    if per_category:
        doc.heading(level + 1, "Per category")
        doc.table(
            ["category", "comparison", "mean", "CI", "vs 0"],
            [
                [cat, comparison_label(k), c.get("mean"), ci_range(c), ci_verdict(c.get("ci_low"), c.get("ci_high"))]
                for cat, comps in sorted(per_category.items())
                for k, c in sorted(comps.items())
            ],
        )


def _teacher_shift_section(doc: Doc, shift: dict | None, *, level: int, prefix: str) -> None:
    doc.heading(level, "Teacher shift")
    versions = (shift or {}).get("versions") or []
    differences = (shift or {}).get("differences") or []
    if not versions and not differences:
        doc.para(f"Teacher shift: {NA}.")
        return
    doc.para(
        "Influence on one fixed student of data written by each teacher version: a teacher that learned to write "
        f"helpful data scores higher. Student: {shift.get('student_uri', '-')}; "
        f"samples: {number(shift.get('samples'))}."
    )
    if versions:
        doc.table(
            ["version", "teacher", "samples", "influence mean", "CI", "positive share", "CI", "length Spearman"],
            [
                [
                    v.get("version"),
                    v.get("teacher") or "-",
                    v.get("samples"),
                    v.get("influence_mean"),
                    ci_range(v),
                    percent(v.get("positive_share")),
                    f"[{percent(v.get('positive_share_ci_low'))}, {percent(v.get('positive_share_ci_high'))}]",
                    v.get("length_spearman"),
                ]
                for v in versions
            ],
        )
        doc.figure(shift_figure(f"{prefix}teacher_shift.png", {"": versions}))
    if differences:
        doc.table(
            [
                "version",
                "vs",
                "influence difference",
                "CI",
                "vs 0",
                "positive-share difference",
                "CI",
                "vs 0",
                "length-controlled",
                "CI",
                "vs 0",
            ],
            [
                [
                    d.get("version"),
                    d.get("vs"),
                    d.get("mean"),
                    ci_range(d),
                    ci_verdict(d.get("ci_low"), d.get("ci_high")),
                    d.get("positive_share"),
                    ci_range(d, "positive_share_ci_low", "positive_share_ci_high"),
                    ci_verdict(d.get("positive_share_ci_low"), d.get("positive_share_ci_high")),
                    d.get("length_controlled_mean"),
                    ci_range(d, "length_controlled_ci_low", "length_controlled_ci_high"),
                    ci_verdict(d.get("length_controlled_ci_low"), d.get("length_controlled_ci_high")),
                ]
                for d in differences
            ],
        )
        doc.bullets(
            f"version {d.get('version')} vs {d.get('vs')}: mean influence changes by {number(d.get('mean'))} "
            f"{ci_range(d)}, {ci_verdict(d.get('ci_low'), d.get('ci_high'))}; length-controlled "
            f"{number(d.get('length_controlled_mean'))}, "
            f"{ci_verdict(d.get('length_controlled_ci_low'), d.get('length_controlled_ci_high'))}."
            for d in differences
        )
    if shift.get("length_spearman_pooled") is not None:
        doc.para(
            "Spearman correlation of influence with response length (pooled): "
            f"{number(shift['length_spearman_pooled'])}."
        )


def render_loop_report(summary: dict, out_dir: Path, *, store=None) -> dict:
    """Write ``report.md`` + PNGs and a self-contained ``report.html`` for one loop into ``out_dir``."""
    title = f"Montessori-Instruct loop {summary.get('loop_id', '?')}"
    doc = Doc()
    doc.heading(1, title)
    doc.para(
        f"Status: {loop_status(summary)}; rounds finished: {len(summary.get('iterations') or [])}; "
        f"wall time: {number(summary.get('seconds'))} s; artifacts: {summary.get('store') or '-'}."
    )
    loop_sections(doc, summary, store, level=2, prefix="")
    return write_report(doc, Path(out_dir), title)
