"""ControllerService: the gRPC layer over the loop manager."""

from __future__ import annotations

import os
import threading
from collections.abc import Sequence
from pathlib import Path

from common.artifacts import ArtifactStore
from common.config import from_message
from common.errors import InvalidArgument
from common.jobs import JobManager
from common.protoconv import fingerprint
from common.service_main import ServiceParts
from montessori.v1 import controller_pb2, controller_pb2_grpc
from services.controller.config import RunConfig, is_store_uri
from services.controller.leader import LeaderElector, LeaseSettings, PodLabel, coordination_api, core_api
from services.controller.loops import LoopManager
from services.controller.remote import RemoteExecutor, WorkerAddresses

#: Where a remote caller's local ``data.*`` paths may point on the controller: the demo data shipped with it.
DEFAULT_DATA_ROOTS = ("data",)
_DATA_FIELDS = ("seed_path", "reference_path", "eval_path")


def confine_data(config: RunConfig, roots: Sequence[str | Path]) -> None:
    """A caller's ``data.*`` is a store URI or a file under one of ``roots`` (symlinks resolved): anything else
    is INVALID_ARGUMENT, with the same answer whether or not the path exists, so a remote caller can neither
    make the controller read its own files nor learn which exist."""
    resolved_roots = [Path(os.path.realpath(root)) for root in roots]
    for name in _DATA_FIELDS:
        value = getattr(config.data, name)
        if is_store_uri(value):
            continue
        path = Path(os.path.realpath(value))
        if not any(path.is_relative_to(root) for root in resolved_roots):
            raise InvalidArgument(
                "must be an artifact-store URI (`montessori loop start --store` uploads local files) or a file "
                f"under the controller's data folder ({', '.join(str(r) for r in roots) or 'none'})",
                field=f"spec.config.data.{name}",
            )


def spec_to_config(
    spec: controller_pb2.LoopSpec, store: ArtifactStore, data_roots: Sequence[str | Path] = DEFAULT_DATA_ROOTS
) -> RunConfig:
    """A LoopSpec as a validated RunConfig on this controller's store; errors name ``spec.config.<field>``.
    Local data paths must lie under ``data_roots`` (:func:`confine_data`)."""
    message = type(spec.config)()
    message.CopyFrom(spec.config)
    artifacts = message.artifacts  # the controller's store, shared with the workers, is the only one
    message.ClearField("artifacts")
    if artifacts and artifacts.rstrip("/") != store.root_uri:
        raise InvalidArgument(
            f"this controller and its workers share the store {store.root_uri}; got {artifacts}",
            field="spec.config.artifacts",
        )
    # One form from the wire to the loop: the message becomes the RunConfig directly (its stage sections are the
    # request's own settings messages), not a dict first.
    config = from_message(RunConfig, message, path="spec.config")
    confine_data(config, data_roots)
    config.artifacts = store.root_uri
    return config


class ControllerServicer(controller_pb2_grpc.ControllerServiceServicer):
    def __init__(self, store: ArtifactStore, loops: LoopManager, data_roots: Sequence[str | Path] = DEFAULT_DATA_ROOTS):
        self.store, self.loops, self.data_roots = store, loops, tuple(data_roots)

    def StartLoop(self, request, context):
        if not request.HasField("spec"):
            raise InvalidArgument("is required", field="spec")
        config = spec_to_config(request.spec, self.store, self.data_roots)
        loop = self.loops.start(
            config, request_id=request.request_id, fingerprint=fingerprint(request), field_prefix="spec.config"
        )
        return controller_pb2.StartLoopResponse(loop=loop.to_proto())

    def GetLoop(self, request, context):
        return controller_pb2.GetLoopResponse(loop=self.loops.get(_loop_id(request)).to_proto())

    def ListLoops(self, request, context):
        return controller_pb2.ListLoopsResponse(loops=[loop.to_proto() for loop in self.loops.list()])

    def StopLoop(self, request, context):
        return controller_pb2.StopLoopResponse(loop=self.loops.stop(_loop_id(request)).to_proto())

    def WatchLoop(self, request, context):
        for event in self.loops.watch(_loop_id(request), request.from_sequence, is_active=context.is_active):
            yield controller_pb2.WatchLoopResponse(event=event.to_proto())


def _loop_id(request) -> str:
    if not request.loop_id:
        raise InvalidArgument("is required", field="loop_id")
    return request.loop_id


def build(
    store: ArtifactStore,
    jobs: JobManager,
    ready: threading.Event,
    *,
    workers: WorkerAddresses,
    election: LeaseSettings | None = None,
    kube_api: str | None = None,
    label_pod: bool = False,
) -> ServiceParts:
    """The controller; with ``election``, only the replica holding the Lease runs loops and is SERVING on ``""``
    (every started replica is SERVING on ``liveness``, which its Kubernetes readiness asks, so a rollout or a
    drain sees it available); with ``label_pod`` the leader labels its own pod (``election.identity`` is the
    pod's name) so that the Service routes callers to it."""
    loops = LoopManager(store, lambda loop_id: RemoteExecutor(store, workers, request_prefix=loop_id))
    servicer = ControllerServicer(store, loops)
    register = lambda server: controller_pb2_grpc.add_ControllerServiceServicer_to_server(servicer, server)  # noqa: E731
    name = controller_pb2.DESCRIPTOR.services_by_name["ControllerService"].full_name
    on_metrics = lambda metrics: setattr(loops, "metrics", metrics)  # noqa: E731 - loop gauges, see common/metrics.py
    if election is None:  # outside a cluster: the single leader
        return ServiceParts(
            register=register,
            full_name=name,
            preload=loops.resume_all,
            on_drain=lambda: loops.shutdown(grace=30),
            on_metrics=on_metrics,
        )
    loops.accepting = False
    electors: list[LeaderElector] = []
    label = PodLabel(core_api(kube_api), election.namespace, election.identity) if label_pod else None
    if label:  # a label left by this pod's previous container (killed while it led), before anything is served
        label.set(False)

    def attach(server) -> None:
        def started() -> None:
            loops.accepting = True
            loops.resume_all()
            server.mark_ready()
            if label:
                label.set(True)

        def stopped() -> None:
            loops.accepting = False
            if label:  # first, so that callers are routed away before the loops are interrupted
                label.set(False)
            server.mark_not_ready()
            threading.Thread(target=loops.interrupt_all, args=(30,), daemon=True).start()

        electors.append(
            LeaderElector(coordination_api(kube_api), election, on_started=started, on_stopped=stopped).start()
        )

    def drain() -> None:
        loops.shutdown(grace=30)
        for elector in electors:
            elector.stop(release=True)

    return ServiceParts(
        register=register, full_name=name, on_server=attach, manages_health=True, on_drain=drain, on_metrics=on_metrics
    )
