"""The report of an experiment (one loop per seed): its verdict, the held-out differences per seed and pooled with a
forest plot, the teacher shift per seed, the teacher's DPO results per seed, the list of its loops, and, when their
summaries are given, each loop's own sections; ``render_experiment_report`` writes it as a report folder.
"""

from __future__ import annotations

from pathlib import Path

from cli.report.charts import forest_figure, shift_figure
from cli.report.document import Doc, write_report
from cli.report.loop import loop_sections, loop_status
from cli.report.wording import (
    EFFECTS,
    NA,
    NULLS,
    ci_range,
    ci_verdict,
    comparison_label,
    comparison_sentence,
    number,
    seed_order,
)

_VERDICTS = {
    "montessori_below_self_instruct_seeds": lambda v: (
        f"Montessori's held-out loss is below Self-Instruct's in {v} seeds."
    ),
    "pooled_ci_excludes_zero": lambda v: (
        "The pooled CI of Montessori − Self-Instruct " + ("excludes 0." if v else "includes 0: no difference shown.")
    ),
    "both_below_base": lambda v: (
        "Montessori and Self-Instruct students are both below the base student: " + ("yes." if v else "no.")
    ),
    "helpful_share_rises": lambda v: (
        "The share of helpful candidates rises with the teacher version: " + ("yes." if v else "no.")
    ),
}


def render_experiment_report(
    experiment: dict, out_dir: Path, *, summaries: dict[str, dict] | None = None, store=None
) -> dict:
    """Write an experiment's report (forest plot, teacher shift per seed, DPO table, verdict; each loop's
    sections when ``summaries`` by seed are given) into ``out_dir``."""
    title = f"Montessori-Instruct experiment {experiment.get('experiment', '?')}"
    per_seed = {str(k): v for k, v in (experiment.get("per_seed") or {}).items()}
    pooled = experiment.get("pooled") or {}
    doc = Doc()
    doc.heading(1, title)
    doc.para(
        f"Seeds: {', '.join(map(str, experiment.get('seeds') or [])) or '-'}; "
        f"data draws per arm: {number(experiment.get('draws'))}. Differences are first − second in held-out loss: "
        "a NEGATIVE difference means the first-named student (Montessori) is better."
    )

    doc.heading(2, "Verdict")
    verdict = experiment.get("verdict") or {}
    if verdict:
        doc.bullets(_VERDICTS[k](v) if k in _VERDICTS else f"{k}: {number(v)}" for k, v in verdict.items())
    else:
        doc.para(f"Verdict: {NA}.")

    doc.heading(2, "Held-out differences per seed and pooled")
    doc.figure(forest_figure("forest.png", per_seed, pooled.get("comparisons") or {}))
    rows, sentences = [], []
    for key in (*EFFECTS, *NULLS):
        entries = [(f"seed {s}", (per_seed[s].get("comparisons") or {}).get(key)) for s in seed_order(per_seed)]
        for who, item in entries + [("pooled", (pooled.get("comparisons") or {}).get(key))]:
            if item:
                rows.append(
                    [
                        comparison_label(key),
                        who,
                        item.get("mean"),
                        ci_range(item),
                        item.get("units"),
                        ci_verdict(item.get("ci_low"), item.get("ci_high")),
                    ]
                )
                if who == "pooled":
                    sentences.append("pooled " + comparison_sentence(key, item))
    if rows:
        doc.table(["comparison", "seed", "mean", "CI", "units", "vs 0"], rows)
        doc.bullets(sentences)
    else:
        doc.para(f"Held-out comparisons: {NA}.")
    if pooled.get("per_category"):
        doc.heading(3, "Pooled, per category")
        doc.table(
            ["category", "comparison", "mean", "CI", "vs 0"],
            [
                [cat, comparison_label(k), c.get("mean"), ci_range(c), ci_verdict(c.get("ci_low"), c.get("ci_high"))]
                for cat, comps in sorted(pooled["per_category"].items())
                for k, c in sorted(comps.items())
            ],
        )

    doc.heading(2, "Teacher shift per seed")
    shift_series = {
        f"seed {s}": (per_seed[s].get("teacher_shift") or {}).get("versions") or [] for s in seed_order(per_seed)
    }
    fig = shift_figure("teacher_shift_per_seed.png", shift_series)
    doc.figure(fig, "Teacher shift per seed")
    differences = (pooled.get("teacher_shift") or {}).get("differences") or []
    if differences:
        doc.table(
            ["version", "vs", "pooled influence difference", "CI", "vs 0", "positive-share difference", "CI", "vs 0"],
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
                ]
                for d in differences
            ],
        )

    doc.heading(2, "Teacher DPO per seed")
    dpo = [
        [
            s,
            r.get("iteration"),
            r.get("pairs"),
            r.get("dpo_reward_margin"),
            r.get("dpo_reward_accuracy"),
            r.get("heldout_reward_margin"),
            r.get("heldout_reward_accuracy"),
        ]
        for s in seed_order(per_seed)
        for r in per_seed[s].get("dpo") or []
    ]
    if dpo:
        doc.table(["seed", "round", "pairs", "DPO margin", "DPO accuracy", "held-out margin", "held-out accuracy"], dpo)
    else:
        doc.para(f"DPO results: {NA}.")

    loops = experiment.get("loops") or {}
    if loops:
        doc.heading(2, "Loops")
        doc.table(
            ["seed", "loop", "summary"],
            [[s, loops[s].get("loop_id", "-"), loops[s].get("summary_uri", "-")] for s in seed_order(loops)],
        )
    for seed in seed_order(summaries or {}):
        summary = summaries[seed]
        doc.heading(2, f"Seed {seed}: loop {summary.get('loop_id', '?')} ({loop_status(summary)})")
        loop_sections(doc, summary, store, level=3, prefix=f"seed-{seed}-")
    return write_report(doc, Path(out_dir), title)
