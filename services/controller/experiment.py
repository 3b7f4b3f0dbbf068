"""An experiment: one loop per seed (each holds every arm: base, Montessori and Self-Instruct draws, teacher
shift), pooled into one verdict. Pure analysis over the loops' summaries and per-row losses in the store.

Pooled held-out comparisons treat every (seed, draw) as a training unit and resample units and held-out
rows together; the pooled teacher shift is the mean over seeds of each seed's difference, resampled
within seeds.
"""

from __future__ import annotations

from common.artifacts import ArtifactStore
from common.stats import positive_share, stratified_difference
from services.controller.evaluation import BASE, MONTESSORI, SELF_INSTRUCT, compare, comparison_units, derived_seed

#: Version 1 of the file format (bumped when a key changes meaning).
FORMAT = 1


def _losses(store: ArtifactStore, students: dict) -> dict[str, list[float | None]]:
    return {
        name: [row["loss"] for row in store.get_jsonl(store.key_of(s["losses_uri"]))] for name, s in students.items()
    }


def _categories(store: ArtifactStore, students: dict) -> list[str]:
    return [row.get("category", "") for row in store.get_jsonl(store.key_of(students[BASE]["losses_uri"]))]


def pooled_comparisons(store: ArtifactStore, summaries: dict[int, dict], *, resamples: int, confidence: float) -> dict:
    """Every comparison over all seeds' draws, overall and per category."""
    losses: dict[str, list[float | None]] = {}
    arms: dict[str, list[str]] = {MONTESSORI: [], SELF_INSTRUCT: [], BASE: [], "sft_null": []}
    categories: list[str] = []
    for seed, summary in sorted(summaries.items()):
        students = summary["evaluation"]["students"]
        for name, values in _losses(store, students).items():
            losses[f"{seed}:{name}"] = values
        categories = _categories(store, students)
        for d in range(summary["evaluation"]["draws"]):
            if f"{MONTESSORI}-{d}" in students:
                arms[MONTESSORI].append(f"{seed}:{MONTESSORI}-{d}")
                arms[BASE].append(f"{seed}:{BASE}")
            if f"{SELF_INSTRUCT}-{d}" in students:
                arms[SELF_INSTRUCT].append(f"{seed}:{SELF_INSTRUCT}-{d}")
        if f"{SELF_INSTRUCT}-0-sft-seed" in students:
            arms["sft_null"].append(f"{seed}:{SELF_INSTRUCT}-0-sft-seed")
    m, si = arms[MONTESSORI], arms[SELF_INSTRUCT]
    units = comparison_units(losses, m, si if len(si) == len(m) else [], base=arms[BASE], sft_null=arms["sft_null"])
    if "null_data_draw" in units:  # another draw of the same seed's teacher, not another seed's
        units["null_data_draw"] = _within_seed_draws(si)
    if "self_instruct_vs_base" in units:
        units["self_instruct_vs_base"] = (si, [f"{n.split(':')[0]}:{BASE}" for n in si])
    args = lambda name: {"resamples": resamples, "confidence": confidence, "seed": derived_seed("pooled", name)}  # noqa: E731
    out = {"comparisons": compare(losses, units, list(range(len(categories))), args), "per_category": {}}
    for category in sorted({c for c in categories if c}):
        rows = [i for i, c in enumerate(categories) if c == category]
        out["per_category"][category] = compare(
            losses, {k: v for k, v in units.items() if not k.startswith("null")}, rows, args
        )
    return out


def _within_seed_draws(self_instruct: list[str]) -> tuple[list[str], list[str]]:
    first = lambda n: n.rsplit("-", 1)[1] == "0"  # noqa: E731 - draw 0 (not draw 10, 20, ...)
    firsts = {n.split(":")[0]: n for n in self_instruct if first(n)}
    later = [n for n in self_instruct if not first(n)]
    return later, [firsts[n.split(":")[0]] for n in later]


def pooled_shift(store: ArtifactStore, summaries: dict[int, dict], *, resamples: int, confidence: float) -> dict:
    """Each later teacher version against version 0, averaged over seeds (each on its own seed's student)."""
    shifts = {seed: s["evaluation"].get("teacher_shift") for seed, s in summaries.items()}
    shifts = {seed: shift for seed, shift in shifts.items() if shift and len(shift["versions"]) > 1}
    if not shifts:
        return {"differences": []}
    values = {
        seed: [[row["influence"] for row in store.get_jsonl(store.key_of(v["scores_uri"]))] for v in shift["versions"]]
        for seed, shift in shifts.items()
    }
    common_versions = min(len(v) for v in values.values())
    out = []
    for version in range(1, common_versions):
        args = {"resamples": resamples, "confidence": confidence}
        mean = stratified_difference(
            [(v[version], v[0]) for v in values.values()], seed=derived_seed("pooled-shift", version), **args
        )
        share = stratified_difference(
            [(positive_share(v[version]), positive_share(v[0])) for v in values.values()],
            seed=derived_seed("pooled-shift-share", version),
            **args,
        )
        out.append(
            {
                "version": version,
                "vs": 0,
                "seeds": len(values),
                "mean": mean.mean,
                "ci_low": mean.ci_low,
                "ci_high": mean.ci_high,
                "positive_share": share.mean,
                "positive_share_ci_low": share.ci_low,
                "positive_share_ci_high": share.ci_high,
            }
        )
    return {"differences": out}


def verdict(per_seed: dict, pooled: dict) -> dict:
    """The claims the issue asks about, each decided by its interval (a CI touching 0 decides nothing)."""
    comparisons = pooled["comparisons"]
    below = [s for s in per_seed.values() if "montessori_vs_self_instruct" in s["comparisons"]]
    vs_si = comparisons.get("montessori_vs_self_instruct")
    out = {
        "montessori_below_self_instruct_seeds": (
            f"{sum(s['comparisons']['montessori_vs_self_instruct']['mean'] < 0 for s in below)}/{len(below)}"
        ),
        "montessori_below_self_instruct_ci_excludes_zero": bool(vs_si and vs_si["ci_high"] < 0),
        "self_instruct_below_montessori_ci_excludes_zero": bool(vs_si and vs_si["ci_low"] > 0),
        "montessori_below_base": bool(comparisons.get("montessori_vs_base", {}).get("ci_high", 0) < 0),
        "self_instruct_below_base": bool(comparisons.get("self_instruct_vs_base", {}).get("ci_high", 0) < 0),
    }
    # A row interval of one training unit excludes 0 for any two models; the nulls (same method, another SFT seed
    # or data draw) say how large a difference needs no method at all.
    nulls = [abs(c["mean"]) for name, c in comparisons.items() if name.startswith("null_")]
    if vs_si and nulls:
        out["null_spread"] = max(nulls)
        out["effect_larger_than_null_spread"] = bool(abs(vs_si["mean"]) > max(nulls))
    shift = pooled["teacher_shift"]["differences"]
    if shift:
        last = shift[-1]
        out["helpful_share_rises"] = bool(last["positive_share_ci_low"] > 0)
        out["mean_influence_rises"] = bool(last["ci_low"] > 0)
    return out


def aggregate(
    store: ArtifactStore, name: str, summaries: dict[int, dict], *, config: dict, resamples: int, confidence: float
) -> dict:
    """``experiment.json``: per-seed figures (from each loop's summary), pooled figures and the verdict."""
    per_seed = {}
    for seed, summary in sorted(summaries.items()):
        evaluation = summary["evaluation"]
        per_seed[str(seed)] = {
            "loop_id": summary["loop_id"],
            "summary_uri": summary.get("summary_uri", ""),
            "losses": {
                k: evaluation[k]
                for k in ("base_student_eval_loss", "montessori_student_eval_loss", "baseline_student_eval_loss")
                if k in evaluation
            },
            "comparisons": evaluation.get("comparisons", {}),
            "teacher_shift": evaluation.get("teacher_shift", {}),
            "dpo": [
                {
                    k: row.get(k)
                    for k in (
                        "iteration",
                        "pairs",
                        "dpo_reward_margin",
                        "dpo_reward_accuracy",
                        "heldout_pairs",
                        "heldout_reward_margin",
                        "heldout_reward_accuracy",
                    )
                }
                for row in summary["iterations"]
            ],
            "rounds": [
                {
                    k: row.get(k)
                    for k in (
                        "iteration",
                        "candidates",
                        "positive_share_raw",
                        "positive_share_centred",
                        "student_reference_loss",
                        "seconds",
                    )
                }
                for row in summary["iterations"]
            ],
            "seconds": summary.get("seconds"),
        }
    pooled = pooled_comparisons(store, summaries, resamples=resamples, confidence=confidence)
    pooled["teacher_shift"] = pooled_shift(store, summaries, resamples=resamples, confidence=confidence)
    first = next(iter(summaries.values()))["evaluation"]
    return {
        "format": FORMAT,
        "experiment": name,
        "seeds": sorted(summaries),
        "draws": first.get("draws", 1),
        "eval_rows": first.get("eval_rows"),
        "train_examples": first.get("train_examples"),
        "loops": {
            str(seed): {"loop_id": s["loop_id"], "summary_uri": s.get("summary_uri", "")}
            for seed, s in sorted(summaries.items())
        },
        "config": config,
        "per_seed": per_seed,
        "pooled": pooled,
        "verdict": verdict(per_seed, pooled),
    }
