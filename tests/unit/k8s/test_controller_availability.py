"""Issue 22, finding 2: controller availability that Kubernetes understands. Every controller replica is
Ready (readiness asks the health entry "liveness", SERVING on every started replica; "" is the leader's alone),
the ``controller`` Service selects the label the leader puts on its own pod (``--label-leader``, RBAC ``patch``
on pods), the rollout adds a replica before removing one, and the PDB allows one eviction with every replica
Ready. The runtime half (labels following the lease, fail-over times) is tests/integration/test_leader_election.py.

Before: only the leader was Ready, the Service selected every replica, and with 2 replicas and one Ready the PDB
(maxUnavailable 1) allowed 0 disruptions: a drain of the leader's node blocked and a rollout never finished."""

from __future__ import annotations

import pytest

from tests.unit.k8s.test_manifests import (
    OVERLAYS,
    find,
    main_container,
    of_kind,
    pod_template,
    rendered,  # noqa: F401 - the module fixture
    service_deployment,
)

LEADER_LABEL = "montessori.dev/controller-leader"


def _replicas(deployment: dict) -> int:
    return deployment["spec"].get("replicas", 1)


def _allowed_disruptions(pdb: dict, replicas: int, ready: int) -> int:
    """What the disruption controller computes for an integer maxUnavailable or minAvailable."""
    spec = pdb["spec"]
    desired = replicas - spec["maxUnavailable"] if "maxUnavailable" in spec else spec["minAvailable"]
    return max(0, ready - desired)


def _ready_replicas(deployment: dict) -> int:
    """Replicas Ready once started: all of them when readiness asks "liveness"; one (the leader) when it asks ""
    (the controller's "" is SERVING on the leader only)."""
    probe = main_container(deployment).get("readinessProbe", {}).get("grpc", {})
    return _replicas(deployment) if probe.get("service") == "liveness" else 1


@pytest.mark.parametrize("target", OVERLAYS)
def test_every_replica_is_ready_and_the_service_reaches_the_leader_by_its_label(rendered, target):  # noqa: F811
    objects = rendered[target]
    deployment = service_deployment(objects, "controller")
    args = main_container(deployment)["args"]
    assert "--leader-election" in args and "--label-leader" in args
    readiness = main_container(deployment)["readinessProbe"]["grpc"]
    assert readiness == {"port": 8080, "service": "liveness"}, "readiness must not wait for leadership"
    assert main_container(deployment)["livenessProbe"]["grpc"]["service"] == "liveness"
    service = find(objects, "Service", "controller")
    assert service["spec"]["selector"] == {"app.kubernetes.io/name": "controller", LEADER_LABEL: "true"}
    # The leader adds the label at run time: no template carries it, and nothing else selects it.
    assert LEADER_LABEL not in pod_template(deployment)["metadata"].get("labels", {})
    others = [s for s in of_kind(objects, "Service") if s is not service]
    assert all(LEADER_LABEL not in s["spec"].get("selector", {}) for s in others)
    (role,) = of_kind(objects, "Role")
    pods = [r for r in role["rules"] if "pods" in r["resources"]]
    assert pods == [{"apiGroups": [""], "resources": ["pods"], "verbs": ["patch"]}]


@pytest.mark.parametrize("target", OVERLAYS)
def test_a_rollout_adds_a_ready_replica_first_and_a_drain_may_evict_one(rendered, target):  # noqa: F811
    objects = rendered[target]
    deployment = service_deployment(objects, "controller")
    strategy = deployment["spec"]["strategy"]
    assert strategy["type"] == "RollingUpdate"
    assert strategy["rollingUpdate"] == {"maxSurge": 1, "maxUnavailable": 0}
    replicas = _replicas(deployment)
    assert replicas == {"gpu": 2, "cpu-dev": 1}[target]
    pdb = find(objects, "PodDisruptionBudget", "controller")
    assert _allowed_disruptions(pdb, replicas, _ready_replicas(deployment)) == 1


def test_the_disruption_arithmetic_sees_the_old_blocking_drain():
    """With only the leader Ready (the old readiness), 2 replicas and maxUnavailable 1 allow no eviction."""
    pdb = {"spec": {"maxUnavailable": 1}}
    assert _allowed_disruptions(pdb, replicas=2, ready=1) == 0
    assert _allowed_disruptions(pdb, replicas=2, ready=2) == 1
