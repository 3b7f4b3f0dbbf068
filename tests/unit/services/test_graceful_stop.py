"""A graceful controller stop is safe (issue 22, finding 1): an interrupted loop leaves its job running on the worker
(only StopLoop cancels it), and a re-sent request whose job ended cancelled gets a fresh job with the same request id,
so a resumed (or restarted) loop is never answered with a dead job.

The worker is the real preference service in process; its stage is held open by a gate, reporting progress, so the
controller's executor is stopped with the job in flight. The whole loop through five services, stopped by SIGTERM and
by a leader hand-over, is in tests/integration/test_kill_trials.py."""

from __future__ import annotations

import threading

import pytest

from common.errors import Cancelled, Interrupted
from common.grpc_server import ServerConfig
from common.jobs import JobManager, JobState
from common.progress import one_step
from common.service_main import start_service
from montessori.v1 import preference_pb2
from services.controller.remote import RemoteExecutor, WorkerAddresses
from services.preference import servicer as preference
from services.preference import stages
from tests.assemble_inputs import one_pair_inputs


@pytest.fixture
def worker(tmp_path, monkeypatch):
    """The preference service whose Assemble reports progress until ``gate`` opens, then assembles for real."""
    gate = threading.Event()
    real = stages.assemble

    def held(store, request, *, model_roots=None):
        work = real(store, request, model_roots=model_roots)
        if work is None:
            return None

        def run(progress):
            step = 0
            while not gate.wait(0.02):
                step += 1
                progress("pairs", step % 10, 10)
            return work(progress)

        return run

    monkeypatch.setattr(stages, "assemble", held)
    service = start_service("preference", ServerConfig(artifacts=str(tmp_path / "store")), preference.build)
    store = service.store
    candidates, scores = one_pair_inputs(store)
    request = preference_pb2.AssembleRequest(candidates=candidates, scores=scores, output_prefix="loops/L/iter-1/pairs")
    unused = "127.0.0.1:9"
    addresses = WorkerAddresses(unused, unused, f"127.0.0.1:{service.port}", unused)
    executors = []

    def executor() -> RemoteExecutor:  # one per controller: a resumed loop gets a new one
        executors.append(RemoteExecutor(service.store, addresses, request_prefix="L", attempts=2))
        return executors[-1]

    yield service, request, executor, gate
    gate.set()
    for each in executors:
        each.close()
    service.stop()


def stopped_by(error: Cancelled):
    """A progress sink that stops the executor as the loop runner does: ``error`` at the first progress report."""

    def progress(label, done, total, metrics=None):
        raise error

    return progress


def jobs(service) -> list:
    return [job.snapshot for job in service.jobs._registry.entries()]


def test_an_interrupted_controller_leaves_the_job_running_and_the_next_one_gets_it_back(worker):
    service, request, executor, gate = worker
    with pytest.raises(Interrupted):
        executor().run(request, stopped_by(Interrupted("controller shutting down")))
    (job,) = jobs(service)
    assert job.state is JobState.RUNNING  # not cancelled: the next controller picks it up
    gate.set()
    result = executor().run(request)  # the resumed loop re-sends the same request
    assert result.metrics["pairs"] == 1
    (job,) = jobs(service)  # the very job that was in flight
    assert job.state is JobState.SUCCEEDED


def test_stop_loop_cancels_the_job_and_a_restarted_loop_gets_a_fresh_one(worker):
    service, request, executor, gate = worker
    with pytest.raises(Cancelled) as err:
        executor().run(request, stopped_by(Cancelled("loop stopped")))
    assert not isinstance(err.value, Interrupted)
    (cancelled,) = jobs(service)
    service.jobs.wait(cancelled.job_id, timeout=10)
    assert service.jobs.get(cancelled.job_id).state is JobState.CANCELLED
    gate.set()
    result = executor().run(request)  # StartLoop again with the same loop id: the same request id
    assert result.metrics["pairs"] == 1
    states = sorted(job.state.name for job in jobs(service))
    assert states == ["CANCELLED", "SUCCEEDED"]  # a new job under the same request id; the old one stays readable
    assert len({job.request_id for job in jobs(service)}) == 1


def test_a_job_that_breaks_because_it_was_cancelled_ends_cancelled_and_is_run_again():
    """FAILED-by-shutdown: work that a shutdown (or CancelJob) breaks, rather than stops between units, is no answer
    to its request either."""
    manager = JobManager(service="t")
    started, release = threading.Event(), threading.Event()

    def breaks_when_cancelled(progress):
        started.set()
        release.wait(10)
        raise OSError("connection closed by the shutdown")

    first = manager.submit("r", "kind", breaks_when_cancelled, fingerprint="f")
    assert started.wait(10)
    manager.cancel(first.job_id)
    release.set()
    final = manager.wait(first.job_id, timeout=10)
    assert final.state is JobState.CANCELLED and "OSError" in final.error_message
    again = manager.submit("r", "kind", one_step("s", lambda: {"ok": 1.0}), fingerprint="f")
    assert again.job_id != first.job_id
    assert manager.wait(again.job_id, timeout=10).state is JobState.SUCCEEDED
    assert manager.submit("r", "kind", one_step("s", lambda: {}), fingerprint="f").job_id == again.job_id
    manager.shutdown(grace=1)
