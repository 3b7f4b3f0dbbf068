"""Prometheus metrics of one service (its own registry: no global state)."""
from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

from common.jobs import JobSnapshot

#: Job metrics exported as throughput gauges when a job reports them.
THROUGHPUT_KEYS = ("candidates_per_second", "tokens_per_second")


class ServiceMetrics:
    """Jobs by state, job durations, throughput and (on a GPU) memory in use."""

    def __init__(self, service: str):
        self.service = service
        self.registry = CollectorRegistry()
        self.jobs = Counter("montessori_jobs_total", "Jobs finished, by kind and final state.",
                            ["service", "kind", "state"], registry=self.registry)
        self.duration = Histogram("montessori_job_duration_seconds", "Wall time of finished jobs.", ["service", "kind"],
                                  registry=self.registry, buckets=(0.1, 0.5, 1, 5, 15, 60, 300, 900, 3600, float("inf")))
        self.throughput = Gauge("montessori_throughput", "Last job's throughput (candidates/s, tokens/s).",
                                ["service", "metric"], registry=self.registry)
        self.gpu_memory = Gauge("montessori_gpu_memory_bytes", "CUDA memory allocated by this process.",
                                ["service"], registry=self.registry)
        self.gpu_memory.labels(service).set_function(_gpu_memory)

    def observe(self, job: JobSnapshot, seconds: float) -> None:
        self.jobs.labels(self.service, job.kind, job.state.name.lower()).inc()
        self.duration.labels(self.service, job.kind).observe(seconds)
        for key in THROUGHPUT_KEYS:
            if key in job.metrics:
                self.throughput.labels(self.service, key).set(job.metrics[key])

    def serve(self, port: int, host: str = "127.0.0.1") -> None:
        start_http_server(port, addr=host, registry=self.registry)


def _gpu_memory() -> float:
    import torch

    return float(torch.cuda.memory_allocated()) if torch.cuda.is_available() else 0.0
