"""Per-loop Prometheus gauges fed from controller loop events (common/metrics.py), read back from the registry."""

from __future__ import annotations

import pytest

from common.metrics import ServiceMetrics


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture()
def metrics() -> tuple[ServiceMetrics, Clock]:
    clock = Clock()
    return ServiceMetrics("controller", clock=clock), clock


def value(metrics: ServiceMetrics, name: str, **labels: str) -> float | None:
    return metrics.registry.get_sample_value(name, {"loop_id": "L", **labels})


def test_a_finished_round_sets_the_quality_gauges(metrics):
    m, clock = metrics
    m.observe_loop_event(
        "L",
        "round_finished",
        {
            "iteration": 2.0,
            "pairs": 7,
            "student_reference_loss": 1.25,
            "influence_mean": -0.003,
            "positive_share_raw": 0.4,
            "positive_share_centred": 0.55,
            "dpo_reward_margin": 0.8,
            "seconds": 12.0,
        },
    )
    assert value(m, "montessori_loop_round") == 2.0
    assert value(m, "montessori_loop_pairs") == 7.0
    assert value(m, "montessori_loop_student_reference_loss") == 1.25
    assert value(m, "montessori_loop_influence_mean") == -0.003
    assert value(m, "montessori_loop_positive_share", kind="raw") == 0.4
    assert value(m, "montessori_loop_positive_share", kind="centred") == 0.55
    assert value(m, "montessori_loop_dpo_reward_margin") == 0.8
    assert value(m, "montessori_loop_last_progress_timestamp_seconds") == 1000.0
    assert m.registry.get_sample_value("montessori_loop_pairs", {"loop_id": "other"}) is None  # per loop


def test_missing_keys_are_skipped_not_zeroed(metrics):
    m, clock = metrics
    m.observe_loop_event("L", "round_finished", {"iteration": 1, "pairs": 3, "dpo_reward_margin": 0.5})
    m.observe_loop_event("L", "round_finished", {"iteration": 2, "pairs": 0, "reused": True, "note": "x"})
    assert value(m, "montessori_loop_round") == 2.0 and value(m, "montessori_loop_pairs") == 0.0
    assert value(m, "montessori_loop_dpo_reward_margin") == 0.5  # the round without DPO keeps the last value
    assert value(m, "montessori_loop_influence_mean") is None  # never reported: no series
    m.observe_loop_event("L", "round_finished", {})  # nothing at all: no error


def test_progress_events_only_move_the_last_progress_time(metrics):
    m, clock = metrics
    for kind in ("progress", "stage_started", "stage_finished"):
        clock.now += 60
        m.observe_loop_event("L", kind, {"iteration": 1, "pairs": 99, "loss": 2.0})
        assert value(m, "montessori_loop_last_progress_timestamp_seconds") == clock.now
    assert value(m, "montessori_loop_pairs") is None and value(m, "montessori_loop_round") is None


def test_evaluation_sets_the_held_out_losses_by_student(metrics):
    m, _ = metrics
    m.observe_loop_event(
        "L",
        "evaluation_finished",
        {"base_student_eval_loss": 2.5, "montessori_student_eval_loss": 2.1, "baseline_student_eval_loss": 2.3},
    )
    assert value(m, "montessori_loop_heldout_loss", student="base") == 2.5
    assert value(m, "montessori_loop_heldout_loss", student="montessori") == 2.1
    assert value(m, "montessori_loop_heldout_loss", student="self_instruct") == 2.3
    m.observe_loop_event("L", "loop_finished", {"seconds": 3.0, "rounds": 2})  # accepted, only progress


def test_the_state_gauge_is_one_for_the_current_state_only(metrics):
    m, _ = metrics
    m.observe_loop_state("L", "RUNNING")  # LoopState names are upper case
    states = {s: value(m, "montessori_loop_state", state=s) for s in ("running", "succeeded", "failed", "stopped")}
    assert states == {"running": 1.0, "succeeded": 0.0, "failed": 0.0, "stopped": 0.0}
    m.observe_loop_state("L", "failed")
    assert value(m, "montessori_loop_state", state="failed") == 1.0
    assert value(m, "montessori_loop_state", state="running") == 0.0
    with pytest.raises(ValueError):
        m.observe_loop_state("L", "paused")


def test_forgetting_a_loop_removes_its_series(metrics):
    m, _ = metrics
    m.observe_loop_state("L", "succeeded")
    m.observe_loop_event("L", "round_finished", {"iteration": 1, "pairs": 3, "positive_share_raw": 0.5})
    m.observe_loop_event("K", "round_finished", {"iteration": 1, "pairs": 4})
    m.forget_loop("L")
    assert value(m, "montessori_loop_pairs") is None and value(m, "montessori_loop_state", state="succeeded") is None
    assert m.registry.get_sample_value("montessori_loop_pairs", {"loop_id": "K"}) == 4.0


def test_the_loop_manager_feeds_its_events_and_states(metrics, tmp_path):
    """LoopManager's event sink (what LoopRunner's on_event calls) and its state changes reach the gauges."""
    from common.artifacts import LocalArtifactStore
    from services.controller.loops import LoopManager, LoopSnapshot, LoopState, _Loop

    m, _ = metrics
    manager = LoopManager(LocalArtifactStore(tmp_path), executor_factory=lambda loop_id: None)
    manager.metrics = m
    loop = _Loop(LoopSnapshot("L", LoopState.RUNNING, "file:///x", 0.0), "", "")
    manager._observe_state(loop)
    manager._event(loop, "round_finished", 3, "round", {"pairs": 5, "student_reference_loss": 1.5}, None)
    assert value(m, "montessori_loop_round") == 3.0  # the event's iteration when the metrics lack one
    assert value(m, "montessori_loop_pairs") == 5.0
    assert value(m, "montessori_loop_state", state="running") == 1.0


def test_the_controller_service_hands_its_metrics_to_its_loop_manager(tmp_path):
    """start_service calls ServiceParts.on_metrics: the registry /metrics serves is the one the loops feed."""
    from common.grpc_server import ServerConfig
    from common.service_main import start_service
    from services.controller.remote import WorkerAddresses
    from services.controller.servicer import build

    unused = "127.0.0.1:9"  # no loop is started: the workers are never called
    service = start_service(
        "controller",
        ServerConfig(artifacts=str(tmp_path / "store")),
        lambda store, jobs, ready: build(store, jobs, ready, workers=WorkerAddresses(*[unused] * 4)),
    )
    try:
        loops = service.parts.preload.__self__  # the single-leader controller preloads with loops.resume_all
        assert isinstance(loops.metrics, ServiceMetrics)
        assert loops.metrics.observe == service.jobs._on_finish  # the same ServiceMetrics as the job gauges
    finally:
        service.stop()
