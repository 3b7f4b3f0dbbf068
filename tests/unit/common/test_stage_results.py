"""Typed stage results: what a worker publishes is read back by the controller's type, and a metric the controller
needs that the worker did not publish is an error naming it (not a silent default)."""

from __future__ import annotations

from pathlib import Path

import pytest

from common.errors import FailedPrecondition
from common.stage_results import AssembleMetrics, EvaluateMetrics, ScoreMetrics, TrainTeacherMetrics


def test_the_dpo_result_a_trainer_publishes_is_what_the_controller_reads():
    from services.trainer.dpo import DPOResult

    result = DPOResult(
        output_dir=Path("x"),
        adapter=True,
        steps=3,
        train_loss=0.5,
        reward_margin_first=0.1,
        reward_margin_last=0.7,
        reward_accuracy_last=1.0,
        pairs=4,
    )
    metrics = result.metrics()
    read = TrainTeacherMetrics.from_metrics(metrics)
    assert read.reward_margin_last == 0.7 and read.pairs == 4 and read.heldout_pairs == 0
    assert "output_dir" not in metrics and read.adapter
    assert "heldout_reward_margin" not in metrics  # absent, not a made-up number, when nothing was held out


def test_the_pairs_stats_are_the_assemble_result():
    from services.preference.config import PreferenceConfig
    from services.preference.pairs import ScoredCandidate, assemble_pairs

    candidates = [ScoredCandidate("a", "g", "p", "r1", 0.5), ScoredCandidate("b", "g", "p", "r2", -0.5)]
    pairs, stats = assemble_pairs(candidates, PreferenceConfig())
    assert len(pairs) == 1
    assert AssembleMetrics.from_metrics(stats) == AssembleMetrics(**stats)


def test_the_score_metrics_name_their_mode_and_audit():
    metrics = ScoreMetrics(1, 2, 3.0, 0.1, 0.0, 0.2, 1, 0, 5.0).to_metrics()
    metrics |= ScoreMetrics.mode_flags("first_order") | {"audit_size": 4, "fell_back_to_exact": 0, "other": 1}
    read = ScoreMetrics.from_metrics(metrics)
    assert read.mode == "first_order"
    assert read.audit == {"audit_size": 4, "fell_back_to_exact": 0}


@pytest.mark.parametrize(
    "cls,metrics,missing",
    [
        (TrainTeacherMetrics, {"steps": 1}, "train_loss"),
        (EvaluateMetrics, {"rows": 3}, "loss"),
    ],
)
def test_a_metric_the_reader_needs_and_the_worker_did_not_publish_is_named(cls, metrics, missing):
    with pytest.raises(FailedPrecondition, match=repr(missing)):
        cls.from_metrics(metrics)


def test_the_registry_names_each_read_stage_result():
    from common.stages import STAGES

    typed = {stage.kind: stage.result for stage in STAGES if stage.result}
    assert typed == {
        "score": ScoreMetrics,
        "merge-scores": ScoreMetrics,
        "assemble": AssembleMetrics,
        "train-teacher": TrainTeacherMetrics,
        "evaluate": EvaluateMetrics,
    }
