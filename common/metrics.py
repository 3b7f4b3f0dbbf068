"""Prometheus metrics of one service (its own registry: no global state).

Besides job metrics, the controller exports per-loop quality gauges (label ``loop_id``) from the
events its loops emit, so a dashboard and alerts (k8s/components/monitoring) can follow a
synthesis loop's health: influence sign balance, pairs found, DPO margin, the student's losses.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Mapping

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from common.jobs import JobSnapshot

#: Job metrics exported as throughput gauges when a job reports them.
THROUGHPUT_KEYS = ("candidates_per_second", "tokens_per_second")
#: Loop states as ``montessori_loop_state``'s ``state`` label (the controller's LoopState names, lower case).
LOOP_STATES = ("running", "succeeded", "failed", "stopped")
#: round_finished metric key -> single-series per-loop gauge.
ROUND_GAUGES = {
    "iteration": "round",
    "pairs": "pairs",
    "student_reference_loss": "student_reference_loss",
    "influence_mean": "influence_mean",
    "dpo_reward_margin": "dpo_reward_margin",
}
#: round_finished metric key -> ``kind`` label of montessori_loop_positive_share.
SHARE_KINDS = {"positive_share_raw": "raw", "positive_share_centred": "centred"}
#: evaluation_finished metric key -> ``student`` label of montessori_loop_heldout_loss.
HELDOUT_STUDENTS = {
    "base_student_eval_loss": "base",
    "montessori_student_eval_loss": "montessori",
    "baseline_student_eval_loss": "self_instruct",
}


class LoopMetrics:
    """Per-loop gauges, fed with the controller's loop events; missing or non-numeric keys are skipped."""

    def __init__(self, registry: CollectorRegistry, clock: Callable[[], float] = time.time):
        self.clock = clock
        loop = ["loop_id"]
        self.gauges = {
            "round": Gauge(
                "montessori_loop_round", "Last finished round (iteration) of the loop.", loop, registry=registry
            ),
            "student_reference_loss": Gauge(
                "montessori_loop_student_reference_loss",
                "The updated student's loss on the reference set after the last round.",
                loop,
                registry=registry,
            ),
            "influence_mean": Gauge(
                "montessori_loop_influence_mean",
                "Mean local data influence of the last round's candidates.",
                loop,
                registry=registry,
            ),
            "pairs": Gauge("montessori_loop_pairs", "Preference pairs the last round found.", loop, registry=registry),
            "dpo_reward_margin": Gauge(
                "montessori_loop_dpo_reward_margin",
                "The last round's final DPO reward margin.",
                loop,
                registry=registry,
            ),
        }
        self.positive_share = Gauge(
            "montessori_loop_positive_share",
            "Share of the last round's candidates with positive influence (raw or centred scores).",
            ["loop_id", "kind"],
            registry=registry,
        )
        self.heldout_loss = Gauge(
            "montessori_loop_heldout_loss",
            "Held-out loss of the final students (base, montessori, self_instruct baseline).",
            ["loop_id", "student"],
            registry=registry,
        )
        self.last_progress = Gauge(
            "montessori_loop_last_progress_timestamp_seconds",
            "Unix time of the loop's last event (progress, stage, round).",
            loop,
            registry=registry,
        )
        self.state = Gauge(
            "montessori_loop_state",
            "1 for the loop's current state, 0 for the others.",
            ["loop_id", "state"],
            registry=registry,
        )

    def observe_event(self, loop_id: str, kind: str, metrics: Mapping[str, object]) -> None:
        """One loop event; every kind counts as progress."""
        self.last_progress.labels(loop_id).set(self.clock())
        if kind == "round_finished":
            for key, name in ROUND_GAUGES.items():
                _set(self.gauges[name], (loop_id,), metrics.get(key))
            for key, share in SHARE_KINDS.items():
                _set(self.positive_share, (loop_id, share), metrics.get(key))
        elif kind == "evaluation_finished":
            for key, student in HELDOUT_STUDENTS.items():
                _set(self.heldout_loss, (loop_id, student), metrics.get(key))

    def observe_state(self, loop_id: str, state: str) -> None:
        state = state.lower()
        if state not in LOOP_STATES:
            raise ValueError(f"unknown loop state {state!r}")
        for name in LOOP_STATES:
            self.state.labels(loop_id, name).set(1.0 if name == state else 0.0)

    def forget(self, loop_id: str) -> None:
        """Drop every series of a loop (bounded cardinality once a controller forgets old loops)."""
        single = [*self.gauges.values(), self.last_progress]
        removals = [(g, (loop_id,)) for g in single]
        removals += [(self.positive_share, (loop_id, k)) for k in SHARE_KINDS.values()]
        removals += [(self.heldout_loss, (loop_id, s)) for s in HELDOUT_STUDENTS.values()]
        removals += [(self.state, (loop_id, s)) for s in LOOP_STATES]
        for gauge, labels in removals:
            with contextlib.suppress(KeyError):  # a series that was never set
                gauge.remove(*labels)


def _set(gauge: Gauge, labels: tuple[str, ...], value: object) -> None:
    """Set a series when ``value`` is a number; missing keys and non-numbers are skipped (``labels()`` alone would
    create the series at 0, which a dashboard cannot tell from a real 0)."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        gauge.labels(*labels).set(float(value))


class ServiceMetrics:
    """Jobs by state, job durations, throughput, (on a GPU) memory in use, and (controller) loop gauges."""

    def __init__(self, service: str, clock: Callable[[], float] = time.time):
        self.service = service
        self.registry = CollectorRegistry()
        self.jobs = Counter(
            "montessori_jobs_total",
            "Jobs finished, by kind and final state.",
            ["service", "kind", "state"],
            registry=self.registry,
        )
        self.duration = Histogram(
            "montessori_job_duration_seconds",
            "Wall time of finished jobs.",
            ["service", "kind"],
            registry=self.registry,
            buckets=(0.1, 0.5, 1, 5, 15, 60, 300, 900, 3600, float("inf")),
        )
        self.throughput = Gauge(
            "montessori_throughput",
            "Last job's throughput (candidates/s, tokens/s).",
            ["service", "metric"],
            registry=self.registry,
        )
        self.gpu_memory = GpuMemoryCollector(service)
        self.registry.register(self.gpu_memory)
        self.loops = LoopMetrics(self.registry, clock)

    def observe(self, job: JobSnapshot, seconds: float) -> None:
        self.jobs.labels(self.service, job.kind, job.state.name.lower()).inc()
        self.duration.labels(self.service, job.kind).observe(seconds)
        for key in THROUGHPUT_KEYS:
            if key in job.metrics:
                self.throughput.labels(self.service, key).set(job.metrics[key])

    def observe_loop_event(self, loop_id: str, kind: str, metrics: Mapping[str, object]) -> None:
        self.loops.observe_event(loop_id, kind, metrics)

    def observe_loop_state(self, loop_id: str, state: str) -> None:
        self.loops.observe_state(loop_id, state)

    def forget_loop(self, loop_id: str) -> None:
        self.loops.forget(loop_id)

    def serve(self, port: int, host: str = "127.0.0.1") -> None:
        start_http_server(port, addr=host, registry=self.registry)


class GpuMemoryCollector(Collector):
    """``montessori_gpu_memory_bytes`` and ``montessori_gpu_memory_peak_bytes``: the CUDA memory this process's
    tensors hold on each device it has used (``torch.cuda.memory_allocated`` / ``max_memory_allocated`` of that
    device, whichever one the service placed its models on), read at scrape time. Without CUDA, or before this
    process has used it, there is no series at all: a 0 would read as a measured empty GPU."""

    def __init__(self, service: str, cuda=None):
        self.service = service
        self._cuda = cuda  # torch.cuda, or a stand-in with the same functions (tests); imported at first scrape

    def describe(self):
        """The metric names, so that registering this collector does not scrape it (nor import torch)."""
        labels = ["service", "device"]
        return [
            GaugeMetricFamily("montessori_gpu_memory_bytes", "", labels=labels),
            GaugeMetricFamily("montessori_gpu_memory_peak_bytes", "", labels=labels),
        ]

    def collect(self):
        cuda = self._cuda
        if cuda is None:
            import torch

            cuda = torch.cuda
        # is_initialized: reading memory must not create a CUDA context in a process that never made one.
        if not (cuda.is_available() and cuda.is_initialized()):
            return
        allocated = GaugeMetricFamily(
            "montessori_gpu_memory_bytes", "CUDA memory allocated by this process.", labels=["service", "device"]
        )
        peak = GaugeMetricFamily(
            "montessori_gpu_memory_peak_bytes",
            "Most CUDA memory allocated by this process at once.",
            labels=["service", "device"],
        )
        for index in range(cuda.device_count()):
            labels = [self.service, f"cuda:{index}"]
            allocated.add_metric(labels, float(cuda.memory_allocated(index)))
            peak.add_metric(labels, float(cuda.max_memory_allocated(index)))
        yield allocated
        yield peak
