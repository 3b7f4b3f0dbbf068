"""The typed results of the stages whose metrics someone reads: one dataclass per stage, whose field names are
the metric names. The worker that produces a stage's metrics builds them with ``to_metrics`` and the controller
reads them with ``from_metrics``, so both import the same names: a metric renamed on one side fails at once
(``from_metrics`` names the missing metric) instead of being read as absent.

Metrics travel as ``map<string, double>`` (job progress) and in the manifest: numbers only, so a choice (the
influence mode) is one 0/1 flag per option. A stage may publish further metrics (timings, shard indices); the
typed result holds those that are read.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, ClassVar, TypeVar

from common.errors import FailedPrecondition

R = TypeVar("R", bound="StageMetrics")


@dataclass(frozen=True)
class StageMetrics:
    """Base of a stage's typed metrics."""

    #: The stage (manifest ``stage``) these metrics come from, for error messages.
    stage: ClassVar[str] = ""

    def to_metrics(self) -> dict[str, Any]:
        """The metrics as published (a field left None is absent, not a made-up number)."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if getattr(self, f.name) is not None}

    @classmethod
    def from_metrics(cls: type[R], metrics: dict[str, Any]) -> R:
        """The typed result of a published metrics dict: FAILED_PRECONDITION naming a metric the stage did not
        publish (a worker of another version); metrics the result does not hold are left out."""
        values = {}
        for f in dataclasses.fields(cls):
            if f.name in metrics:
                values[f.name] = metrics[f.name]
            elif f.default is dataclasses.MISSING:
                raise FailedPrecondition(f"the {cls.stage} stage published no metric {f.name!r}", field="metrics")
        return cls(**values)


#: Influence modes (InfluenceSettings.mode); the score stage flags the requested one and the one that scored.
INFLUENCE_MODES = ("exact", "first_order", "projected")


@dataclass(frozen=True)
class ScoreMetrics(StageMetrics):
    """Score and MergeScores: the influence of a candidate set on the reference rows."""

    stage: ClassVar[str] = "score"
    candidates: int
    reference_rows: int
    reference_loss: float
    influence_mean: float
    influence_min: float
    influence_max: float
    positive: int
    negative: int
    candidates_per_second: float
    positive_share_raw: float = 0.0
    positive_share_centred: float = 0.0
    shared_step_influence: float = 0.0
    reference_loss_shared_step: float | None = None
    #: 1 for the influence mode the request asked for (settings resolved), 0 for the others.
    mode_exact: int | None = None
    mode_first_order: int | None = None
    mode_projected: int | None = None
    #: The approximate scorer's agreement with exact scoring on its audit sample (mode first_order or projected).
    audit_size: int | None = None
    audit_spearman: float | None = None
    audit_pair_agreement: float | None = None
    fell_back_to_exact: int | None = None

    @property
    def mode(self) -> str:
        """The requested influence mode ("" from a worker that did not publish it)."""
        return next((m for m in INFLUENCE_MODES if getattr(self, f"mode_{m}")), "")

    @property
    def audit(self) -> dict[str, float]:
        """The audit's metrics, if the round was audited."""
        names = ("audit_size", "audit_spearman", "audit_pair_agreement", "fell_back_to_exact")
        return {name: getattr(self, name) for name in names if getattr(self, name) is not None}

    @staticmethod
    def mode_flags(mode: str) -> dict[str, int]:
        return {f"mode_{m}": int(m == mode) for m in INFLUENCE_MODES}


@dataclass(frozen=True)
class AssembleMetrics(StageMetrics):
    """Assemble: the preference pairs formed from scored prompt groups."""

    stage: ClassVar[str] = "pairs"
    candidates: int
    groups: int
    groups_with_pairs: int
    pairs: int
    positive: int
    negative: int
    influence_mean: float
    influence_min: float
    influence_max: float
    influence_stdev: float


@dataclass(frozen=True)
class TrainTeacherMetrics(StageMetrics):
    """TrainTeacher: the DPO run's rewards on its training pairs (and held-out pairs, when some were kept)."""

    stage: ClassVar[str] = "train-teacher"
    steps: int
    train_loss: float
    pairs: int
    reward_margin_first: float
    reward_margin_last: float
    reward_accuracy_last: float
    adapter: bool
    heldout_pairs: int = 0
    #: TRL's eval rewards/accuracies and rewards/margins on the held-out pairs (None: nothing held out).
    heldout_reward_accuracy: float | None = None
    heldout_reward_margin: float | None = None


@dataclass(frozen=True)
class EvaluateMetrics(StageMetrics):
    """Evaluate: a model's mean loss on held-out rows (with an output prefix, also its per-row file's counts)."""

    stage: ClassVar[str] = "evaluate"
    loss: float
    rows: int | None = None
    rows_without_loss: int | None = None
