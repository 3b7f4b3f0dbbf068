"""The loop's stages as jobs on the worker services (the controller's executor).

Each call submits a job with a deterministic request id (so a retried submit returns
the same job), follows it with WatchJob, forwards its progress, and returns the
stage result read from the manifest the worker published in the shared store.
"""
from __future__ import annotations

import threading
import time
from dataclasses import dataclass

import grpc

from common import errors
from common.artifacts import ArtifactStore
from common.config import to_dict
from common.errors import Cancelled
from common.logs import get_logger
from common.manifests import StageResult, publish_manifest
from common.progress import Progress, no_progress
from common.protoconv import dict_to_settings, ref_from_proto
from montessori.v1 import (common_pb2, influence_pb2, influence_pb2_grpc, preference_pb2, preference_pb2_grpc, teacher_pb2,
                           teacher_pb2_grpc, trainer_pb2, trainer_pb2_grpc)
from services.controller.executor import LoopModel

log = get_logger(__name__)

_ERRORS = {cls.code: cls for cls in (errors.InvalidArgument, errors.NotFound, errors.FailedPrecondition,
                                      errors.ResourceExhausted, errors.Unavailable)}


@dataclass(frozen=True)
class WorkerAddresses:
    """host:port of each worker service."""

    teacher: str
    influence: str
    preference: str
    trainer: str


def _model(model: LoopModel) -> common_pb2.ModelSpec:
    return common_pb2.ModelSpec(path=model.path, uri=model.uri, adapter_uris=list(model.adapter_uris),
                                chat_template=model.chat_template)  # None leaves the optional field unset


def merge_audits(shard_metrics: list[dict]) -> dict:
    """The audit of a sharded round: each shard audited its own sample, so report the worst
    agreement, the audited total, and fallback / scoring-mode flags if any shard set them."""
    merged: dict = {}
    for metrics in shard_metrics:
        for key, value in metrics.items():
            if key in ("audit_spearman", "audit_pair_agreement"):
                merged[key] = min(merged.get(key, value), value)
            elif key == "audit_size":
                merged[key] = merged.get(key, 0) + value
            elif key == "fell_back_to_exact" or key.startswith("scored_by_"):
                merged[key] = max(merged.get(key, 0), value)
    return merged


class RemoteExecutor:
    """A StageExecutor whose stages run as jobs on the worker services."""

    def __init__(self, store: ArtifactStore, addresses: WorkerAddresses, *, request_prefix: str, max_message_bytes: int = 4 << 20,
                 attempts: int = 5, submit_timeout: float = 600.0):
        self.store = store
        self.request_prefix = request_prefix
        self.attempts = attempts
        self.submit_timeout = submit_timeout
        self.addresses = addresses
        options = [("grpc.max_send_message_length", max_message_bytes), ("grpc.max_receive_message_length", max_message_bytes)]
        self._options = options
        first = lambda value: value.split(",")[0].removeprefix("dns:///")  # noqa: E731 - evaluation goes to one replica
        self._channels = {name: grpc.insecure_channel(first(getattr(addresses, name)), options=options)
                          for name in ("teacher", "influence", "preference", "trainer")}
        self.teacher = teacher_pb2_grpc.TeacherServiceStub(self._channels["teacher"])
        self.influence = influence_pb2_grpc.InfluenceServiceStub(self._channels["influence"])
        self.preference = preference_pb2_grpc.PreferenceServiceStub(self._channels["preference"])
        self.trainer = trainer_pb2_grpc.TrainerServiceStub(self._channels["trainer"])

    def close(self) -> None:
        for channel in self._channels.values():
            channel.close()

    def _request_id(self, prefix: str) -> str:
        return f"{self.request_prefix}:{prefix}"

    def _run(self, service: str, stub, submit, request, progress: Progress) -> common_pb2.Job:
        """Submit (waiting for the service to be ready), follow the job, and return its final state.

        A worker that dies or restarts mid-job (the stream breaks, the job is unknown to the new
        process, or it was cancelled by the worker's shutdown) gets the same request again, with
        backoff: the request id makes that safe, and outputs are published atomically.
        """
        for attempt in range(1, self.attempts + 1):
            job = _call(service, lambda: submit(request, wait_for_ready=True, timeout=self.submit_timeout)).job
            try:
                for event in stub.WatchJob(common_pb2.WatchJobRequest(job_id=job.job_id), wait_for_ready=True):
                    job = event.job
                    if job.state == common_pb2.JOB_STATE_RUNNING and job.progress.total:
                        progress(job.progress.stage, job.progress.done, job.progress.total, dict(job.progress.metrics))
            except Cancelled:
                stub.CancelJob(common_pb2.CancelJobRequest(job_id=job.job_id), timeout=30)
                raise
            except grpc.RpcError as err:
                if err.code() not in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.NOT_FOUND, grpc.StatusCode.CANCELLED):
                    raise errors.Unavailable(f"{service} service: {err.code().name}: {err.details()}") from None
                self._backoff(service, attempt, f"{err.code().name}: {err.details()}")
                continue
            if job.state == common_pb2.JOB_STATE_CANCELLED:  # not ours: the worker shut down under it
                self._backoff(service, attempt, f"job {job.job_id} was cancelled by the service")
                continue
            if job.state != common_pb2.JOB_STATE_SUCCEEDED:
                raise _ERRORS.get(job.error_code, errors.FailedPrecondition)(
                    f"{service} job {job.job_id} failed: {job.error_message}")
            return job
        raise errors.Unavailable(f"{service} service: job for {request.request_id} did not complete after {self.attempts} attempts")

    def _backoff(self, service: str, attempt: int, reason: str) -> None:
        log.warning("worker lost the job; resubmitting", extra={"stage": service, "metrics": {"attempt": attempt, "reason": reason}})
        if attempt < self.attempts:
            time.sleep(min(2.0 ** attempt, 30.0))

    def _result(self, stage: str, job: common_pb2.Job) -> StageResult:
        manifest = self.store.get_json(self.store.key_of(job.manifest.uri))
        return StageResult(stage, {role: ref_from_proto(ref) for role, ref in job.outputs.items()}, manifest["metrics"],
                           ref_from_proto(job.manifest))

    def generate(self, prefix, *, teacher, seed_uri, config, seed, num_prompts, target, progress=no_progress):
        request = teacher_pb2.GenerateRequest(
            request_id=self._request_id(prefix), teacher=_model(teacher), teacher_label=teacher.label,
            # One engine may serve several loops: the version name is the loop's, e.g. `<loop-id>:teacher-r2`.
            teacher_version=f"{self.request_prefix}:{teacher.label}", seed_set_uri=seed_uri,
            output_prefix=prefix, num_prompts=num_prompts or 0, target_examples=target or 0, seed=seed,
            synthesis=dict_to_settings(to_dict(config)))
        return self._result("generate", self._run("teacher", self.teacher, self.teacher.Generate, request, progress))

    def train_student(self, prefix, *, student, candidates_uri, settings, seed, save_optimizer, limit, progress=no_progress):
        request = trainer_pb2.TrainStudentRequest(
            request_id=self._request_id(prefix), student=_model(student), candidates_uri=candidates_uri, output_prefix=prefix,
            sft=dict_to_settings(to_dict(settings)), seed=seed, save_optimizer=save_optimizer, limit=limit or 0)
        return self._result("train-student", self._run("trainer", self.trainer, self.trainer.TrainStudent, request, progress))

    def score(self, prefix, *, warmup_uri, reference_uri, candidates_uri, config, progress=no_progress):
        replicas = influence_replicas(self.addresses.influence)
        if len(replicas) > 1:
            return self._score_sharded(replicas, prefix, warmup_uri=warmup_uri, reference_uri=reference_uri,
                                       candidates_uri=candidates_uri, config=config, progress=progress)
        request = influence_pb2.ScoreRequest(
            request_id=self._request_id(prefix), warmup_uri=warmup_uri, reference_uri=reference_uri,
            candidates_uri=candidates_uri, output_prefix=prefix, influence=dict_to_settings(to_dict(config)))
        return self._result("score", self._run("influence", self.influence, self.influence.Score, request, progress))

    def _score_sharded(self, replicas: list[str], prefix, *, warmup_uri, reference_uri, candidates_uri, config, progress):
        """Split the candidates into one contiguous shard per ready replica, score the shards in
        parallel, and merge the scores in candidate order. Each candidate's influence depends only
        on the student state and itself, so the merge equals a single-replica run."""
        from concurrent.futures import ThreadPoolExecutor

        from services.influence.tasks import SCORES, score_metrics

        started = time.time()
        candidates = self.store.get_jsonl(self.store.key_of(candidates_uri))
        count = min(len(replicas), len(candidates)) or 1
        bounds = [round(i * len(candidates) / count) for i in range(count + 1)]
        done = [0] * count
        lock = threading.Lock()

        def run_shard(index: int):
            shard_prefix = f"{prefix}/shards/{index}"
            shard = self.store.put_jsonl(f"{shard_prefix}/candidates.jsonl", candidates[bounds[index]:bounds[index + 1]])
            channel = grpc.insecure_channel(replicas[index], options=self._options)
            stub = influence_pb2_grpc.InfluenceServiceStub(channel)

            def shard_progress(label, n, total, metrics=None):
                with lock:
                    done[index] = n
                    progress(label, sum(done), len(candidates), metrics)

            try:
                request = influence_pb2.ScoreRequest(
                    request_id=self._request_id(shard_prefix), warmup_uri=warmup_uri, reference_uri=reference_uri,
                    candidates_uri=shard.uri, output_prefix=shard_prefix, influence=dict_to_settings(to_dict(config)))
                return self._result("score", self._run(f"influence@{replicas[index]}", stub, stub.Score, request, shard_progress))
            finally:
                channel.close()

        with ThreadPoolExecutor(max_workers=count) as pool:
            shards = list(pool.map(run_shard, range(count)))
        rows = [row for shard in shards for row in self.store.get_jsonl(self.store.key_of(shard.outputs["scores"].uri))]
        ref = self.store.put_jsonl(f"{prefix}/{SCORES}", rows)
        first = shards[0].metrics
        metrics = {**score_metrics(rows, reference_rows=first["reference_rows"], reference_loss=first["reference_loss"],
                                   rate=len(rows) / max(time.time() - started, 1e-9)), "replicas": count,
                   **{k: first[k] for k in ("shared_step_influence", "reference_loss_shared_step") if k in first},
                   **merge_audits([shard.metrics for shard in shards])}
        shard_inputs = self.store.get_json(self.store.key_of(shards[0].manifest.uri))["inputs"]
        inputs = {"warmup": shard_inputs["warmup"], "reference_set": shard_inputs["reference_set"],
                  "candidates": self.store.ref(self.store.key_of(candidates_uri)).to_dict(),
                  "shards": [s.manifest.to_dict() for s in shards]}
        return publish_manifest(self.store, prefix, stage="score", inputs=inputs, config=config, outputs={"scores": ref},
                                metrics=metrics, started=started)

    def assemble(self, prefix, *, candidates_uri, scores_uri, config, progress=no_progress):
        request = preference_pb2.AssembleRequest(
            request_id=self._request_id(prefix), candidates_uri=candidates_uri, scores_uri=scores_uri, output_prefix=prefix,
            preference=dict_to_settings(to_dict(config)))
        return self._result("pairs", self._run("preference", self.preference, self.preference.Assemble, request, progress))

    def train_teacher(self, prefix, *, teacher, pairs_uri, settings, seed, progress=no_progress):
        request = trainer_pb2.TrainTeacherRequest(
            request_id=self._request_id(prefix), teacher=_model(teacher), pairs_uri=pairs_uri, output_prefix=prefix,
            dpo=dict_to_settings(to_dict(settings)), seed=seed)
        return self._result("train-teacher", self._run("trainer", self.trainer, self.trainer.TrainTeacher, request, progress))

    def evaluate(self, prefix, *, model, rows_uri, batch_size, limit, progress=no_progress):
        request = influence_pb2.EvaluateRequest(request_id=self._request_id(prefix), model=_model(model), rows_uri=rows_uri,
                                                limit=limit or 0, batch_size=batch_size, output_prefix=prefix)
        return self._result("evaluate", self._run("influence", self.influence, self.influence.Evaluate, request, progress))


def influence_replicas(spec: str) -> list[str]:
    """The influence replicas to shard over: comma-separated ``host:port`` entries; a ``dns:///name:port``
    entry (a headless Service) expands to every address the name resolves to, and only replicas whose
    health is SERVING are used (all of them if none answers yet)."""
    import socket

    from common.health import health_status

    addresses: list[str] = []
    for entry in (e.strip() for e in spec.split(",") if e.strip()):
        if entry.startswith("dns:///"):
            host, _, port = entry.removeprefix("dns:///").rpartition(":")
            ips = sorted({info[4][0] for info in socket.getaddrinfo(host, int(port), type=socket.SOCK_STREAM)})
            addresses += [f"[{ip}]:{port}" if ":" in ip else f"{ip}:{port}" for ip in ips]
        else:
            addresses.append(entry)
    if len(addresses) <= 1:
        return addresses
    ready = [a for a in addresses if health_status(a) == "SERVING"]
    return ready or addresses


def _call(service: str, rpc):
    """A unary call whose failure becomes the matching domain error, naming the service."""
    try:
        return rpc()
    except grpc.RpcError as err:
        cls = _ERRORS.get(err.code().name, errors.Unavailable)
        raise cls(f"{service} service: {err.details()}") from None
