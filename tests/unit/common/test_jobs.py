"""The job machinery shared by the worker services."""

from __future__ import annotations

import threading

import pytest

from common.errors import FailedPrecondition, InvalidArgument, NotFound, ResourceExhausted, Unavailable
from common.jobs import JobManager, JobState


def steps(n: int, gate: threading.Event | None = None):
    def work(progress):
        for i in range(1, n + 1):
            if gate is not None:
                gate.wait(5)
            progress("step", i, n, {"i": i})
        return {"done": n}

    return work


def test_submit_runs_and_reports_progress():
    jobs = JobManager(service="t")
    job = jobs.submit("r1", "kind", steps(3))
    states = [(s.state, s.done) for s in jobs.watch(job.job_id)]
    assert states[-1] == (JobState.SUCCEEDED, 3)
    assert jobs.get(job.job_id).metrics == {"done": 3.0}
    jobs.shutdown(grace=1)


def test_same_request_id_same_job_and_conflicts_are_caught():
    jobs = JobManager(service="t")
    first = jobs.submit("r1", "kind", steps(1), fingerprint="a")
    assert jobs.submit("r1", "kind", steps(1), fingerprint="a").job_id == first.job_id
    with pytest.raises(FailedPrecondition, match="request_id"):
        jobs.submit("r1", "kind", steps(1), fingerprint="b")
    jobs.shutdown(grace=1)


def test_cancel_stops_between_units():
    gate = threading.Event()
    jobs = JobManager(service="t")
    job = jobs.submit("r", "kind", steps(100, gate))
    jobs.cancel(job.job_id)
    gate.set()
    final = jobs.wait(job.job_id, timeout=10)
    assert final.state is JobState.CANCELLED and final.done < 100
    jobs.shutdown(grace=1)


def test_queue_is_bounded_and_jobs_do_not_overlap():
    gate = threading.Event()
    jobs = JobManager(service="t", workers=1, capacity=1)
    running = jobs.submit("a", "k", steps(1, gate))
    next(s for s in jobs.watch(running.job_id) if s.state is JobState.RUNNING)
    queued = jobs.submit("b", "k", steps(1))
    with pytest.raises(ResourceExhausted):
        jobs.submit("c", "k", steps(1))
    assert jobs.get(queued.job_id).state is JobState.QUEUED
    gate.set()
    assert jobs.wait(queued.job_id, timeout=10).state is JobState.SUCCEEDED
    assert jobs.get(running.job_id).state is JobState.SUCCEEDED
    jobs.shutdown(grace=1)


def test_failures_keep_their_code_and_unknown_errors_become_internal():
    jobs = JobManager(service="t")

    def bad(progress):
        raise InvalidArgument("is wrong", field="x")

    def crash(progress):
        raise ZeroDivisionError("boom")

    assert jobs.wait(jobs.submit("a", "k", bad).job_id, 10).error_code == "INVALID_ARGUMENT"
    crashed = jobs.wait(jobs.submit("b", "k", crash).job_id, 10)
    assert crashed.error_code == "INTERNAL" and "boom" not in crashed.error_message
    with pytest.raises(NotFound):
        jobs.get("nope")
    jobs.shutdown(grace=1)
    with pytest.raises(Unavailable):
        jobs.submit("z", "k", steps(1))


def test_every_snapshot_has_a_sequence_and_the_history_is_bounded():
    jobs = JobManager(service="t", history=4)
    job = jobs.submit("r", "kind", steps(10))
    assert job.sequence == 1 and job.state is JobState.QUEUED
    final = jobs.wait(job.job_id, timeout=10)
    assert final.sequence == 13  # queued, running, 10 progress reports, succeeded
    replay = list(jobs.watch(job.job_id, from_sequence=1))  # older than the oldest kept: starts at the oldest kept
    assert [s.sequence for s in replay] == [10, 11, 12, 13] and replay[-1].state is JobState.SUCCEEDED
    jobs.shutdown(grace=1)


def test_watch_from_now_or_from_a_sequence():
    gate = threading.Event()
    jobs = JobManager(service="t")
    job = jobs.submit("r", "kind", steps(3, gate))
    running = next(s for s in jobs.watch(job.job_id, from_sequence=1) if s.state is JobState.RUNNING)
    now = jobs.watch(job.job_id)  # from now: the current snapshot first, nothing older
    assert next(now).sequence == running.sequence == 2
    gate.set()
    assert [s.sequence for s in now] == [3, 4, 5, 6]
    replay = list(jobs.watch(job.job_id, from_sequence=2))
    assert [s.sequence for s in replay] == [2, 3, 4, 5, 6] and [s.done for s in replay[1:4]] == [1, 2, 3]
    jobs.shutdown(grace=1)


def test_a_crash_ends_failed_with_a_message_and_the_worker_lives_on():
    jobs = JobManager(service="svc")

    def crash(progress):
        progress("step", 1, 2)
        raise RuntimeError("secret detail")

    crashed = jobs.submit("a", "k", crash)
    states = [s.state for s in jobs.watch(crashed.job_id, from_sequence=1)]
    assert states[-1] is JobState.FAILED and JobState.RUNNING in states
    final = jobs.get(crashed.job_id)
    assert final.error_code == "INTERNAL" and "RuntimeError" in final.error_message and "svc" in final.error_message
    assert "secret" not in final.error_message
    assert jobs.wait(jobs.submit("b", "k", steps(1)).job_id, 10).state is JobState.SUCCEEDED
    jobs.shutdown(grace=1)


def test_watch_job_rpc_sends_sequences_and_honours_from_sequence():
    from common.job_rpcs import JobRpcs
    from montessori.v1 import common_pb2

    class Context:
        def is_active(self):
            return True

    jobs = JobManager(service="t")
    rpcs = JobRpcs(store=None, jobs=jobs, ready=threading.Event())
    job = jobs.submit("r", "kind", steps(2))
    jobs.wait(job.job_id, timeout=10)
    replay = list(rpcs.WatchJob(common_pb2.WatchJobRequest(job_id=job.job_id, from_sequence=3), Context()))
    assert [r.sequence for r in replay] == [3, 4, 5]
    assert replay[-1].job.state == common_pb2.JOB_STATE_SUCCEEDED and replay[0].job.progress.done == 1
    now = list(rpcs.WatchJob(common_pb2.WatchJobRequest(job_id=job.job_id), Context()))
    assert [r.sequence for r in now] == [5]
    jobs.shutdown(grace=1)
