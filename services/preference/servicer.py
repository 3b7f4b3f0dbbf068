"""PreferenceService: the gRPC layer over ``services.preference.tasks``."""
from __future__ import annotations

import threading

from common.artifacts import ArtifactStore
from common.config import from_dict
from common.job_rpcs import JobRpcs
from common.jobs import JobManager
from common.protoconv import fingerprint, job_to_proto, local_artifact, output_prefix, settings_to_dict
from common.service_main import ServiceParts
from montessori.v1 import preference_pb2, preference_pb2_grpc
from services.preference import tasks
from services.preference.config import PreferenceConfig


class PreferenceServicer(JobRpcs, preference_pb2_grpc.PreferenceServiceServicer):
    def Assemble(self, request, context):
        self.require_ready()
        candidates = local_artifact(self.store, request.candidates_uri, field="candidates_uri")
        scores = local_artifact(self.store, request.scores_uri, field="scores_uri")
        prefix = output_prefix(request.output_prefix)
        config = from_dict(PreferenceConfig, settings_to_dict(request.preference), path="preference")

        def work(progress):
            progress("pairs", 0, 1)
            result = tasks.assemble(self.store, prefix, candidates_path=candidates, scores_path=scores, config=config)
            progress("pairs", 1, 1)
            return result

        job = self.jobs.submit(request.request_id, "assemble", work, fingerprint=fingerprint(request))
        return preference_pb2.AssembleResponse(job=job_to_proto(job))


def build(store: ArtifactStore, jobs: JobManager, ready: threading.Event) -> ServiceParts:
    servicer = PreferenceServicer(store, jobs, ready)
    return ServiceParts(register=lambda server: preference_pb2_grpc.add_PreferenceServiceServicer_to_server(servicer, server),
                        full_name=preference_pb2.DESCRIPTOR.services_by_name["PreferenceService"].full_name)
