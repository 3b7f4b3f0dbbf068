"""A loop's final evaluation: is the Montessori student better, and does the updated teacher write more helpful data?

Student side: ``evaluation.draws`` independent training sets per arm (the final teacher's, the un-updated
teacher's: Self-Instruct), each from a sampling seed of its own and trained with the same SFT into a student;
draw d of both arms shares its SFT seed. Every student and the base student are evaluated per held-out row,
and the arms are compared by paired per-row differences with bootstrap intervals over rows and draws. Beside
the effect, the null spread: another SFT seed on the same data, another data draw from the same teacher.

Teacher side (the paper's diagnostic, ``evaluation.shift_samples``): fresh examples from every teacher version
scored exactly on one fixed student (iteration 1's warmed-up one); mean influence and share of helpful examples
per version, differences to version 0, the correlation of influence with response length, and the difference
at equal length.
"""

from __future__ import annotations

import hashlib
from typing import TYPE_CHECKING

from common.manifests import StageResult
from common.stage_results import EvaluateMetrics
from common.stats import (
    Interval,
    bootstrap_mean,
    difference_of_means,
    length_residuals,
    paired_difference,
    positive_share,
    spearman,
)
from services.controller.executor import LoopModel

if TYPE_CHECKING:  # the runner owns the stages; this module only decides what they are
    from services.controller.loop import LoopRunner

MONTESSORI, SELF_INSTRUCT, BASE = "montessori", "self_instruct", "base"


def derived_seed(*parts) -> int:
    """A seed of its own for each (loop seed, arm, draw, purpose): no two data draws share a sampling seed."""
    return int.from_bytes(hashlib.sha256(":".join(map(str, parts)).encode()).digest()[:4], "big") % (2**31 - 1)


class Evaluation:
    """Runs the evaluation's stages through a loop runner (so they resume like any stage) and computes its figures."""

    def __init__(self, runner: LoopRunner):
        self.runner, self.requests = runner, runner.requests
        self.config = runner.config
        self.settings = runner.config.evaluation
        self.prefix = f"{runner.prefix}/evaluation"
        self.losses: dict[str, list[float | None]] = {}
        self.categories: list[str] = []
        self.students: dict[str, dict] = {}

    def _interval_args(self, salt: str) -> dict:
        return {
            "resamples": self.settings.bootstrap_resamples,
            "confidence": self.settings.confidence,
            "seed": derived_seed(self.config.seed, "bootstrap", salt),
        }

    # -- stages --------------------------------------------------------------------------------

    def _evaluate(self, name: str, model: LoopModel, **extra) -> None:
        r = self.runner
        result = r._stage(
            0,
            f"evaluate-{name}",
            self.requests.evaluate(f"{self.prefix}/{name}", model, "eval", limit=self.settings.max_rows or 0),
        )
        rows = r.store.get_jsonl(r.store.key_of(result.outputs["losses"].uri))
        self.losses[name] = [row["loss"] for row in rows]
        self.categories = [row.get("category", "") for row in rows]
        self.students[name] = {
            "loss": EvaluateMetrics.from_metrics(result.metrics).loss,
            "losses_uri": result.outputs["losses"].uri,
            **extra,
        }

    def _draw(
        self, arm: str, d: int, teacher: LoopModel, *, examples: int, sft_seed: int
    ) -> tuple[StageResult, StageResult]:
        """One training set from ``teacher`` (a sampling seed of its own) and the student SFT makes of it."""
        c = self.config
        at, seed = f"{self.prefix}/{arm}-{d}", derived_seed(c.seed, arm, d, "data")
        data = self.runner._stage(
            0, f"{arm}-{d}-data", self.requests.generate(f"{at}/train-data", teacher, seed=seed, target=examples)
        )
        return data, self._train(
            f"{at}/student", data, sft_seed=sft_seed, examples=examples, stage=f"{arm}-{d}-student"
        )

    def _train(self, at: str, data: StageResult, *, sft_seed: int, examples: int, stage: str) -> StageResult:
        r = self.runner
        return r._stage(
            0,
            stage,
            self.requests.train_student(at, r.base_student, data.outputs["candidates"], seed=sft_seed, limit=examples),
        )

    # -- the evaluation ------------------------------------------------------------------------

    def run(
        self,
        base_teacher: LoopModel,
        final_student: LoopModel,
        final_data: StageResult,
        final_sft_seed: int,
        final_teacher: LoopModel,
    ) -> dict:
        r, s = self.runner, self.settings
        examples = len(r.store.get_jsonl(r.store.key_of(final_data.outputs["candidates"].uri)))
        self._evaluate(BASE, r.base_student)
        self._evaluate(
            f"{MONTESSORI}-0",
            final_student,
            train_data_uri=final_data.outputs["candidates"].uri,
            teacher_version=final_teacher.label,
        )
        out: dict = {"eval_rows": len(self.categories), "draws": s.draws, "train_examples": examples}
        if s.baseline:
            for d in range(s.draws):
                sft_seed = final_sft_seed if d == 0 else derived_seed(self.config.seed, "sft", d)
                if d > 0:
                    data, student = self._draw(MONTESSORI, d, final_teacher, examples=examples, sft_seed=sft_seed)
                    self._evaluate(
                        f"{MONTESSORI}-{d}",
                        LoopModel.stored(student.outputs["model"]),
                        train_data_uri=data.outputs["candidates"].uri,
                        teacher_version=final_teacher.label,
                    )
                data, student = self._draw(SELF_INSTRUCT, d, base_teacher, examples=examples, sft_seed=sft_seed)
                self._evaluate(
                    f"{SELF_INSTRUCT}-{d}",
                    LoopModel.stored(student.outputs["model"]),
                    train_data_uri=data.outputs["candidates"].uri,
                    teacher_version=base_teacher.label,
                )
                if d == 0 and s.null_sft_seed:
                    again = self._train(
                        f"{self.prefix}/{SELF_INSTRUCT}-0-sft-seed/student",
                        data,
                        examples=examples,
                        sft_seed=derived_seed(self.config.seed, "sft", "null"),
                        stage=f"{SELF_INSTRUCT}-0-sft-seed-student",
                    )
                    self._evaluate(
                        f"{SELF_INSTRUCT}-0-sft-seed",
                        LoopModel.stored(again.outputs["model"]),
                        train_data_uri=data.outputs["candidates"].uri,
                        teacher_version=base_teacher.label,
                    )
        out["students"] = self.students
        out.update(self._means())
        out["comparisons"] = self.comparisons()
        out["per_category"] = self.per_category()
        return out

    def _arm(self, arm: str) -> list[str]:
        return [f"{arm}-{d}" for d in range(self.settings.draws) if f"{arm}-{d}" in self.losses]

    def _means(self) -> dict:
        """The summary table's three numbers: the base student and each arm's mean over its draws."""
        mean = lambda names: sum(self.students[n]["loss"] for n in names) / len(names)  # noqa: E731
        out = {
            "base_student_eval_loss": self.students[BASE]["loss"],
            "montessori_student_eval_loss": mean(self._arm(MONTESSORI)),
        }
        if self._arm(SELF_INSTRUCT):
            out["baseline_student_eval_loss"] = mean(self._arm(SELF_INSTRUCT))
        return out

    def comparisons(self, rows: list[int] | None = None) -> dict:
        """Montessori − Self-Instruct, each arm − base, and the two null differences (negative: the first is better)."""
        return compare(
            self.losses,
            comparison_units(self.losses, self._arm(MONTESSORI), self._arm(SELF_INSTRUCT)),
            list(range(len(self.categories))) if rows is None else rows,
            self._interval_args,
        )

    def per_category(self) -> dict:
        categories = sorted({c for c in self.categories if c})
        return {
            category: self.comparisons([i for i, c in enumerate(self.categories) if c == category])
            for category in categories
        }


def comparison_units(
    losses: dict,
    montessori: list[str],
    self_instruct: list[str],
    base: str | list[str] = BASE,
    sft_null: list[str] | None = None,
) -> dict[str, tuple[list[str], list[str]]]:
    """Which students each comparison pairs, unit by unit (a unit: one draw; ``base`` one name or one per unit)."""
    bases = lambda names: base if isinstance(base, list) else [base] * len(names)  # noqa: E731
    wanted = {"montessori_vs_base": (montessori, bases(montessori))}
    if self_instruct:
        wanted["montessori_vs_self_instruct"] = (montessori, self_instruct)
        wanted["self_instruct_vs_base"] = (self_instruct, bases(self_instruct))
        if len(self_instruct) > 1:
            wanted["null_data_draw"] = (self_instruct[1:], [self_instruct[0]] * (len(self_instruct) - 1))
        nulls = (
            sft_null
            if sft_null is not None
            else ([f"{SELF_INSTRUCT}-0-sft-seed"] if f"{SELF_INSTRUCT}-0-sft-seed" in losses else [])
        )
        if nulls:
            wanted["null_sft_seed"] = (nulls, [n.removesuffix("-sft-seed") for n in nulls])
    return wanted


def compare(
    losses: dict[str, list[float | None]], units: dict[str, tuple[list[str], list[str]]], rows: list[int], interval_args
) -> dict:
    """Paired per-row differences a − b (unit i pairs a[i] with b[i]) over the rows every student has a loss on,
    with an interval over rows and units; ``interval_args(name)`` gives each comparison's bootstrap settings."""
    out = {}
    for name, (a, b) in units.items():
        pairs = list(zip(a, b))
        kept = [i for i in rows if all(losses[n][i] is not None for pair in pairs for n in pair)]
        if not pairs or not kept:
            continue
        interval = paired_difference(
            [[losses[x][i] for i in kept] for x, _ in pairs],
            [[losses[y][i] for i in kept] for _, y in pairs],
            **interval_args(name),
        )
        per_unit = [sum(losses[x][i] - losses[y][i] for i in kept) / len(kept) for x, y in pairs]
        out[name] = {**interval.to_dict(), "rows": len(kept), "per_unit": per_unit}
    return out


def teacher_shift(runner: LoopRunner, teachers: list[LoopModel], warmup: StageResult) -> dict:
    """Fresh samples from each teacher version, scored exactly on one student: does DPO make the teacher more
    helpful?"""
    c, requests, samples = runner.config, runner.requests, runner.config.evaluation.shift_samples
    prefix = f"{runner.prefix}/evaluation/teacher-shift"
    exact = type(c.influence)()
    exact.CopyFrom(c.influence)
    exact.mode, exact.audit_size = "exact", 0
    versions, scores = [], []
    for v, teacher in enumerate(teachers):
        seed = derived_seed(c.seed, "shift", v)
        written = runner._stage(
            0, f"shift-{v}-data", requests.generate(f"{prefix}/v{v}/data", teacher, seed=seed, target=samples)
        )
        scored = runner._stage(
            0,
            f"shift-{v}-scores",
            requests.score(
                f"{prefix}/v{v}/scores", warmup.outputs["model"], written.outputs["candidates"], influence=exact
            ),
        )
        candidates = {
            row["id"]: row for row in runner.store.get_jsonl(runner.store.key_of(written.outputs["candidates"].uri))
        }
        rows = runner.store.get_jsonl(runner.store.key_of(scored.outputs["scores"].uri))
        values = [row["influence"] for row in rows]
        lengths = [len(candidates[row["id"]]["response"]) for row in rows]
        scores.append((values, lengths))
        args = {"resamples": c.evaluation.bootstrap_resamples, "confidence": c.evaluation.confidence}
        mean, share = (
            bootstrap_mean(values, seed=derived_seed(c.seed, "shift-ci", v), **args),
            bootstrap_mean(positive_share(values), seed=derived_seed(c.seed, "shift-share", v), **args),
        )
        versions.append(
            {
                "version": v,
                "teacher": teacher.label,
                "samples": len(values),
                "influence_mean": mean.mean,
                "ci_low": mean.ci_low,
                "ci_high": mean.ci_high,
                "positive_share": share.mean,
                "positive_share_ci_low": share.ci_low,
                "positive_share_ci_high": share.ci_high,
                "length_spearman": spearman(values, lengths),
                "mean_response_chars": sum(lengths) / max(len(lengths), 1),
                "scores_uri": scored.outputs["scores"].uri,
                "data_uri": written.outputs["candidates"].uri,
            }
        )
    return {
        "student_uri": warmup.outputs["model"].uri,
        "samples": samples,
        "versions": versions,
        "differences": shift_differences(scores, runner.config),
        "length_spearman_pooled": spearman(
            [v for values, _ in scores for v in values], [n for _, lengths in scores for n in lengths]
        ),
    }


def shift_differences(scores: list[tuple[list[float], list[int]]], config) -> list[dict]:
    """Each later version against version 0: mean influence, share helpful, and mean influence at equal length
    (residuals of a pooled regression on log response length)."""
    if len(scores) < 2:
        return []
    residuals = length_residuals(
        [v for values, _ in scores for v in values], [n for _, lengths in scores for n in lengths]
    )
    per_version, start = [], 0
    for values, _ in scores:
        per_version.append(residuals[start : start + len(values)])
        start += len(values)
    args = {"resamples": config.evaluation.bootstrap_resamples, "confidence": config.evaluation.confidence}
    out = []
    for v in range(1, len(scores)):
        salt = lambda what, v=v: derived_seed(config.seed, "shift-diff", what, v)  # noqa: E731
        mean = difference_of_means(scores[v][0], scores[0][0], seed=salt("mean"), **args)
        share = difference_of_means(
            positive_share(scores[v][0]), positive_share(scores[0][0]), seed=salt("share"), **args
        )
        controlled = difference_of_means(per_version[v], per_version[0], seed=salt("length"), **args)
        out.append(
            {
                "version": v,
                "vs": 0,
                **_named(mean, ""),
                **_named(share, "positive_share"),
                **_named(controlled, "length_controlled"),
            }
        )
    return out


def _named(interval: Interval, name: str) -> dict:
    """``mean``/``ci_low``/``ci_high`` for the plain difference; ``<name>`` (a share) or ``<name>_mean`` and
    ``<name>_ci_low``/``<name>_ci_high`` for the others."""
    if not name:
        return {"mean": interval.mean, "ci_low": interval.ci_low, "ci_high": interval.ci_high}
    point = name if name == "positive_share" else f"{name}_mean"
    return {point: interval.mean, f"{name}_ci_low": interval.ci_low, f"{name}_ci_high": interval.ci_high}
