"""InfluenceService: the gRPC layer over ``services.influence.stages``."""

from __future__ import annotations

import threading

from common.artifacts import ArtifactStore
from common.job_rpcs import JobRpcs
from common.jobs import JobManager
from common.service_main import ServiceParts
from montessori.v1 import influence_pb2, influence_pb2_grpc
from services.influence import stages


class InfluenceServicer(JobRpcs, influence_pb2_grpc.InfluenceServiceServicer):
    def Score(self, request, context):
        return influence_pb2.ScoreResponse(job=self.submit(request, "score", stages.score))

    def MergeScores(self, request, context):
        return influence_pb2.MergeScoresResponse(job=self.submit(request, "merge-scores", stages.merge_scores))

    def Evaluate(self, request, context):
        return influence_pb2.EvaluateResponse(job=self.submit(request, "evaluate", stages.evaluate))


def build(store: ArtifactStore, jobs: JobManager, ready: threading.Event) -> ServiceParts:
    servicer = InfluenceServicer(store, jobs, ready)
    return ServiceParts(
        register=lambda server: influence_pb2_grpc.add_InfluenceServiceServicer_to_server(servicer, server),
        full_name=influence_pb2.DESCRIPTOR.services_by_name["InfluenceService"].full_name,
    )
