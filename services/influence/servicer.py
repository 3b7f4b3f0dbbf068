"""InfluenceService: the gRPC layer over ``services.influence.tasks``."""
from __future__ import annotations

import threading

from common.artifacts import ArtifactStore
from common.config import from_dict
from common.job_rpcs import JobRpcs
from common.jobs import JobManager
from common.protoconv import count, fingerprint, job_to_proto, local_artifact, model_from_proto, output_prefix, settings_to_dict
from common.service_main import ServiceParts
from montessori.v1 import influence_pb2, influence_pb2_grpc
from services.influence import tasks
from services.influence.config import InfluenceConfig


class InfluenceServicer(JobRpcs, influence_pb2_grpc.InfluenceServiceServicer):
    def Score(self, request, context):
        self.require_ready()
        warmup = local_artifact(self.store, request.warmup_uri, field="warmup_uri")
        reference = local_artifact(self.store, request.reference_uri, field="reference_uri")
        candidates = local_artifact(self.store, request.candidates_uri, field="candidates_uri")
        prefix = output_prefix(request.output_prefix)
        config = from_dict(InfluenceConfig, settings_to_dict(request.influence), path="influence")

        def work(progress):
            return tasks.score(self.store, prefix, warmup_dir=warmup, reference_path=reference, candidates_path=candidates,
                               config=config, progress=progress)

        job = self.jobs.submit(request.request_id, "score", work, fingerprint=fingerprint(request))
        return influence_pb2.ScoreResponse(job=job_to_proto(job))

    def Evaluate(self, request, context):
        self.require_ready()
        model = model_from_proto(request.model, self.store, field="model")
        rows = local_artifact(self.store, request.rows_uri, field="rows_uri")
        limit = count(request.limit, field="limit", maximum=10_000_000)
        batch_size = count(request.batch_size, field="batch_size", maximum=1024) or 16

        prefix = output_prefix(request.output_prefix) if request.output_prefix else None

        def work(progress):
            if prefix is not None:
                return tasks.evaluate(self.store, prefix, model=model, rows_path=rows, batch_size=batch_size,
                                      limit=limit or None, field="model", progress=progress)
            progress("evaluate", 0, 1)
            loss = tasks.evaluation_loss(model, rows, batch_size=batch_size, limit=limit or None, field="model")
            progress("evaluate", 1, 1)
            return {"loss": loss}

        job = self.jobs.submit(request.request_id, "evaluate", work, fingerprint=fingerprint(request))
        return influence_pb2.EvaluateResponse(job=job_to_proto(job))


def build(store: ArtifactStore, jobs: JobManager, ready: threading.Event) -> ServiceParts:
    servicer = InfluenceServicer(store, jobs, ready)
    return ServiceParts(register=lambda server: influence_pb2_grpc.add_InfluenceServiceServicer_to_server(servicer, server),
                        full_name=influence_pb2.DESCRIPTOR.services_by_name["InfluenceService"].full_name)
