"""Kill -9 trials: a random service is SIGKILLed at a random moment of a loop and restarted; the loop still ends
SUCCEEDED with every output folder byte-identical to an uninterrupted loop's.

Five trials run in ``make test``; ``MONTESSORI_KILL_TRIALS=20`` runs more, ``MONTESSORI_KILL_SEED`` draws others,
``MONTESSORI_KILL_REPORT=<file>`` appends one JSON line per trial to that file.
Each trial's draw (victim, moment) is in its test id, so a failure names what to replay.
"""

from __future__ import annotations

import json
import os
import random
import signal
import time

import grpc
import pytest

from cli.local_services import ORDER, wait_serving
from montessori.v1 import controller_pb2, controller_pb2_grpc
from tests.integration.test_resume import output_digests, start_service
from tests.integration.test_services import tiny_spec

TRIALS = int(os.environ.get("MONTESSORI_KILL_TRIALS", "5"))
SEED = int(os.environ.get("MONTESSORI_KILL_SEED", "15"))


def draws(trials: int, seed: int) -> list[tuple[str, float]]:
    """(service, moment as a fraction of the uninterrupted loop's events) per trial; the first five cover every
    service once, so the CI trials kill each service."""
    rng = random.Random(seed)
    victims = rng.sample(ORDER, len(ORDER)) + [rng.choice(ORDER) for _ in range(max(0, trials - len(ORDER)))]
    return [(victim, round(rng.uniform(0.05, 0.95), 2)) for victim in victims[:trials]]


def spec(tiny_models, name: str) -> controller_pb2.LoopSpec:
    return tiny_spec(tiny_models, name=name, iterations=1, evaluation={"baseline": False, "shift_samples": 0})


def stub(services) -> controller_pb2_grpc.ControllerServiceStub:
    return controller_pb2_grpc.ControllerServiceStub(
        grpc.insecure_channel(f"127.0.0.1:{services['ports']['controller']}")
    )


def events(controller, loop_id: str) -> list[controller_pb2.LoopEvent]:
    request = controller_pb2.WatchLoopRequest(loop_id=loop_id, from_sequence=1)
    return [r.event for r in controller.WatchLoop(request, timeout=900)]


@pytest.fixture(scope="module")
def uninterrupted(services, tiny_models):
    controller = stub(services)
    loop = controller.StartLoop(
        controller_pb2.StartLoopRequest(request_id="kill-clean", spec=spec(tiny_models, "kclean"))
    )
    history = events(controller, loop.loop.loop_id)
    assert history[-1].loop.state == controller_pb2.LOOP_STATE_SUCCEEDED, history[-1].loop.error_message
    return loop.loop.loop_id, len(history), output_digests(services["store"], loop.loop.loop_id)


@pytest.mark.parametrize(
    ("trial", "victim", "moment"),
    [(i, victim, moment) for i, (victim, moment) in enumerate(draws(TRIALS, SEED))],
    ids=[f"{i}-{victim}-at-{moment}" for i, (victim, moment) in enumerate(draws(TRIALS, SEED))],
)
def test_a_service_killed_at_a_random_moment_changes_no_output(
    services, tiny_models, uninterrupted, trial, victim, moment, tmp_path
):
    _, total_events, expected = uninterrupted
    kill_at = max(1, int(moment * total_events))
    controller = stub(services)
    loop_id = controller.StartLoop(
        controller_pb2.StartLoopRequest(request_id=f"kill-{SEED}-{trial}", spec=spec(tiny_models, f"k{SEED}t{trial}"))
    ).loop.loop_id
    seen, last = 0, None
    for response in controller.WatchLoop(
        controller_pb2.WatchLoopRequest(loop_id=loop_id, from_sequence=1), timeout=900
    ):
        seen, last = seen + 1, response.event
        if seen >= kill_at:
            break
    process = services["processes"][victim]
    os.killpg(process.pid, signal.SIGKILL)
    process.wait(timeout=30)
    killed_at = time.monotonic()
    with open(tmp_path / f"{victim}.log", "ab") as log:
        process = services["processes"][victim] = start_service(
            victim, services["ports"], services["env"], services["store"].root_uri, log
        )
    wait_serving(f"127.0.0.1:{services['ports'][victim]}", timeout=120, process=process)

    history = events(stub(services), loop_id)  # a restarted controller resumes the loop from the store
    final = history[-1].loop
    record = json.dumps(
        {
            "trial": trial,
            "victim": victim,
            "killed_after_event": seen,
            "of_events": total_events,
            "during": f"{last.stage or '-'} ({controller_pb2.LoopEventKind.Name(last.kind)})" if last else "-",
            "restart_to_end_s": round(time.monotonic() - killed_at, 1),
            "reused_stages": sum(bool(e.metrics.get("reused")) for e in history),
            "state": controller_pb2.LoopState.Name(final.state),
        }
    )
    print(record)
    if os.environ.get("MONTESSORI_KILL_REPORT"):  # one JSON line per trial, for the figures of a run
        with open(os.environ["MONTESSORI_KILL_REPORT"], "a") as report:
            report.write(record + "\n")
    assert final.state == controller_pb2.LOOP_STATE_SUCCEEDED, final.error_message
    assert output_digests(services["store"], loop_id) == expected
