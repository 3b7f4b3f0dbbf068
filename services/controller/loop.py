"""The Montessori-Instruct loop (METHOD.md "Iterations" + the small-scale comparison).

Per iteration k: the current teacher writes a warm-up set and a probing set; the
current student is warmed up (optimizer state kept); influence is measured on the
probing candidates; pairs are assembled; the teacher is trained with DPO; the
updated teacher writes the training set; the student is trained with SFT from the
base student, and that student is the one probed in iteration k+1. At the end the
final student is compared with a Self-Instruct baseline (same budget, un-updated
teacher). Each stage is one typed request (``requests.py``) run by a :class:`StageExecutor`:
in process (``cli/local.py``), or as a job on a worker service (``remote.py``); either way
every artifact goes through the store.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from common.artifacts import ArtifactRef, ArtifactStore, open_store
from common.config import config_digest, to_dict
from common.errors import Cancelled, FailedPrecondition, Interrupted, InvalidArgument, MontessoriError, printable
from common.jsonl import read_instruction_rows
from common.logs import get_logger
from common.manifests import StageResult, code_version
from common.progress import Progress, Stopwatch, no_progress
from common.protoconv import fingerprint
from common.stage_results import AssembleMetrics, EvaluateMetrics, ScoreMetrics, TrainTeacherMetrics
from services.controller.config import RunConfig, is_store_uri
from services.controller.evaluation import Evaluation, teacher_shift
from services.controller.executor import LoopModel, StageExecutor
from services.controller.requests import StageRequests, base_model, renamed, stored_ref

log = get_logger(__name__)

#: The loop's state in the store: its config and every completed stage, by request fingerprint.
STATE = "state.json"
#: Resumes in a row that complete no stage before a loop is recorded failed.
MAX_RESUMES = 3
#: One line per finished round (the summary's ``iterations``), rewritten after every round.
ROUNDS = "rounds.jsonl"

#: on_event(kind, iteration, stage, metrics, progress) — stage transitions and progress for watchers.
EventSink = Callable[..., None]


@dataclass
class IterationSummary:
    """The per-iteration row of the summary table."""

    iteration: int
    candidates: int = 0
    groups: int = 0
    pairs: int = 0
    influence_mean: float = 0.0
    influence_min: float = 0.0
    influence_max: float = 0.0
    #: Share of candidates with a positive raw (official) and centred score: raw ones mostly share one sign.
    positive_share_raw: float = 0.0
    positive_share_centred: float = 0.0
    #: Raw influence of the zero-gradient step that every raw score shares (0 with plain SGD).
    shared_step_influence: float = 0.0
    #: Why the teacher was not trained this round (empty when it was): a round without a group holding both a
    #: helpful and a harmful candidate forms no pair, and the next stages use the previous teacher.
    teacher_unchanged_reason: str = ""
    dpo_reward_margin: float | None = None
    dpo_reward_accuracy: float | None = None
    #: DPO's implicit reward on the round's held-out pairs (``dpo.heldout_fraction``), which it did not train on.
    heldout_reward_margin: float | None = None
    heldout_reward_accuracy: float | None = None
    heldout_pairs: int | None = None
    student_reference_loss: float = 0.0
    teacher_adapters: list[str] = field(default_factory=list)
    #: Which teacher version wrote the training set (the engine's name for it, e.g. `<loop>:teacher-r2`).
    teacher_version: str = ""
    #: How influence was computed and, for an approximate mode, its audit against `exact`.
    influence_mode: str = ""
    audit: dict = field(default_factory=dict)
    seconds: float = 0.0
    #: Where the round's artifacts are (the report reads the scores; lineage follows the data).
    scores_uri: str = ""
    pairs_uri: str = ""
    train_data_uri: str = ""


#: The loop's data sets: run-config field -> name in the store and in stage requests.
DATA_SETS = {"seed_path": "seed", "reference_path": "reference", "eval_path": "eval"}


def check_data_files(config: RunConfig, store: ArtifactStore | None = None) -> None:
    """The data sets exist and are well-formed JSONL rows (errors name the field or file:line); what needs a
    model (every row tokenised) is checked by the workers in :meth:`LoopRunner.prepare`. A data set given as a
    store URI is read from ``store`` (the loop's)."""
    config.data.check_files()
    for name in DATA_SETS:
        try:
            read_instruction_rows(data_file(config, name, store))
        except MontessoriError as err:
            raise type(err)(err.message, field=f"data.{name}") from None


def data_file(config: RunConfig, name: str, store: ArtifactStore | None) -> Path:
    """The local file of the data set ``data.<name>``: the path itself, or the local copy of its store URI
    (downloaded and digest-verified by the store; errors name the field)."""
    value = getattr(config.data, name)
    if not is_store_uri(value):
        return Path(value)
    if store is None:
        raise InvalidArgument(f"{value} is in an artifact store, and this command has none", field=f"data.{name}")
    ref = stored_ref(value, store, field=f"data.{name}")
    return store.local_path(store.key_of(ref.uri))


def new_loop_id(config: RunConfig) -> str:
    return config.loop_id or f"{config.name}-{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}"


class LoopRunner:
    """Runs one loop against one artifact store, stage by stage, recording every manifest."""

    def __init__(
        self,
        config: RunConfig,
        *,
        executor: StageExecutor,
        store: ArtifactStore | None = None,
        progress: Progress = no_progress,
        on_event: EventSink | None = None,
        should_stop: Callable[[], bool] = lambda: False,
        loop_id: str | None = None,
        state_extra: dict | None = None,
        interrupted: Callable[[], bool] = lambda: False,
    ):
        self.config = config
        self.store = store or open_store(config.artifacts)
        check_data_files(config, self.store)
        self.executor = executor
        self.user_progress = progress
        self.on_event = on_event or (lambda *a, **k: None)
        self.should_stop = should_stop
        self.loop_id = loop_id or new_loop_id(config)
        self.prefix = f"loops/{self.loop_id}"
        self.rows: list[IterationSummary] = []
        self.state_extra = state_extra or {}
        self.interrupted = interrupted  # stop because this process is shutting down: resume later
        # The student every SFT starts from; its chat template travels with it to every stage that loads it
        # (trained students keep it in their saved tokenizer). A store URI is pinned to its digest in prepare().
        self.base_student = LoopModel(path=config.models.student, chat_template=config.models.student_chat_template)
        self.base_teacher = LoopModel(path=config.models.teacher)
        self.prepared: StageRequests | None = None

    # -- plumbing ------------------------------------------------------------------------

    def _check_stop(self) -> None:
        """Cancelled on StopLoop; Interrupted when this process stops (or lost the leadership): then the work in
        flight is left running on the workers for the controller that resumes the loop."""
        if self.should_stop():
            if self.interrupted():
                raise Interrupted("loop interrupted; it resumes on the next controller")
            raise Cancelled("loop stopped")

    def _progress(self, iteration: int, stage: str) -> Progress:
        def progress(label: str, done: int, total: int, metrics: dict | None = None) -> None:
            self._check_stop()
            self.user_progress(label, done, total, metrics)
            self.on_event("progress", iteration, stage, progress=(label, done, total, metrics or {}))

        return progress

    def _stage(self, iteration: int, stage: str, request) -> StageResult:
        """Run one stage request with start/finish events and a stop check before it.

        The request names everything the stage depends on (input artifacts with digests, settings, seed).
        A stage whose request matches one this loop already completed, and whose manifest and outputs still
        verify, is not recomputed: that is how a loop resumes.
        """
        self._check_stop()
        key = fingerprint(request)
        self.on_event("stage_started", iteration, stage)
        result = self._completed(key)
        reused = result is not None
        if result is None:
            result = self.executor.run(request, self._progress(iteration, stage))
            self.state["resumes_without_progress"] = 0
            self.state["stages"][key] = {
                "stage": stage,
                "iteration": iteration,
                "outputs": {k: v.to_dict() for k, v in result.outputs.items()},
                "manifest": result.manifest.to_dict(),
                "metrics": result.metrics,
            }
            self._save_state("running")
        numeric = {
            k: float(v) for k, v in result.metrics.items() if isinstance(v, (int, float)) and not isinstance(v, bool)
        }
        self.on_event("stage_finished", iteration, stage, metrics={**numeric, "reused": float(reused)})
        log.info(
            "stage reused" if reused else "stage done",
            extra={"loop_id": self.loop_id, "stage": stage, "iteration": iteration, "metrics": numeric},
        )
        return result

    # -- loop state in the store (what a restarted controller resumes from) -----------------

    def _load_state(self) -> dict:
        key = f"{self.prefix}/{STATE}"
        if self.store.exists(key):
            state = self.store.get_json(key)
            if state.get("config_sha256") != config_digest(self.config):
                raise FailedPrecondition(f"loop {self.loop_id} already exists with a different config", field="loop_id")
            return state
        return {
            "loop_id": self.loop_id,
            "config": to_dict(self.config),
            "config_sha256": config_digest(self.config),
            "status": "running",
            "stages": {},
            **self.state_extra,
        }

    def _count_resume(self) -> None:
        """A loop resumed :data:`MAX_RESUMES` times without completing a stage in between (it takes its controller
        down each time, e.g. out of memory) is recorded failed instead of being resumed forever."""
        attempts = self.state.get("resumes_without_progress", 0) + 1
        self.state["resumes_without_progress"] = attempts
        if attempts > MAX_RESUMES:
            self.state["error"] = f"resumed {MAX_RESUMES} times without completing a stage; not resumed again"
            self._save_state("failed")
            raise FailedPrecondition(self.state["error"], field="loop_id")
        self._save_state("running")

    def _save_state(self, status: str) -> None:
        self.state["status"] = status
        self.state["updated_at"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        self.store.put_json(f"{self.prefix}/{STATE}", self.state)

    def record_stopped(self) -> None:
        """Record the loop stopped (StopLoop) before it could run again (a resumed loop still waiting for its
        workers): no controller resumes it."""
        self.state = self._load_state()
        self._save_state("stopped")

    def _completed(self, fingerprint: str) -> StageResult | None:
        """The recorded result of an identical stage, if its manifest and outputs are intact."""
        done = self.state["stages"].get(fingerprint)
        if done is None:
            return None
        refs = {role: ArtifactRef(**ref) for role, ref in done["outputs"].items()}
        manifest = ArtifactRef(**done["manifest"])
        try:
            for ref in (*refs.values(), manifest):
                if self.store.ref(self.store.key_of(ref.uri)).sha256 != ref.sha256:
                    return None
        except MontessoriError:
            return None
        return StageResult(done["stage"], refs, done["metrics"], manifest)

    def _import_data(self) -> dict[str, ArtifactRef]:
        """Copy the three data sets into the loop's inputs in the store (workers read them there; manifests pin
        them): a local file, or the verified local copy of a store URI (the loop keeps its own copy, so it does not
        depend on an upload that may be collected later)."""
        return {
            name: self.store.put_file(f"{self.prefix}/inputs/{name}.jsonl", data_file(self.config, field, self.store))
            for field, name in DATA_SETS.items()
        }

    def prepare(self) -> StageRequests:
        """Import the data sets and have the workers validate every setting and input of the loop
        (``validate_only`` requests) before any work: a bad one is an error naming the run-config field, and
        leaves nothing behind for a new loop. Idempotent."""
        if self.prepared is not None:
            return self.prepared
        existed = self.store.exists(f"{self.prefix}/{STATE}")
        requests = StageRequests(self.config, self.loop_id, self._import_data())
        try:
            # A store URI becomes the model pinned to its recorded digest (errors name models.student/teacher).
            models = self.config.models
            self.base_student = base_model(
                models.student, self.store, field="models.student", chat_template=models.student_chat_template
            )
            self.base_teacher = base_model(models.teacher, self.store, field="models.teacher")
            for request, renames in requests.checks(self.base_student, self.base_teacher):
                try:
                    self.executor.check(request)
                except MontessoriError as err:
                    message = err.message
                    for field, name in DATA_SETS.items():  # a row is named in the user's file, not in the store's copy
                        message = message.replace(requests.data[name].uri, getattr(self.config.data, field))
                    raise type(err)(message, field=renamed(err.field, renames)) from None
        except MontessoriError:
            if not existed:
                self.store.delete(self.prefix)
            raise
        self.prepared = requests
        return requests

    # -- the loop ------------------------------------------------------------------------

    def run_iteration(
        self, k: int, teacher: LoopModel, student: LoopModel
    ) -> tuple[LoopModel, LoopModel, IterationSummary]:
        """One iteration; returns the updated teacher, the new student and the summary row.

        Also keeps the iteration's training data and SFT seed in ``self.last_train_data`` / ``self.last_sft_seed``
        (draw 0 of the evaluation's Montessori arm) and iteration 1's warm-up in ``self.first_warmup`` (the
        student of the teacher-shift diagnostic).
        """
        c, watch, r = self.config, Stopwatch(), self.requests
        base = f"{self.prefix}/iter-{k}"
        seed = c.seed * 1000 + k * 10
        warm_data = self._stage(
            k, "warmup-data", r.generate(f"{base}/warmup-data", teacher, seed=seed + 1, target=c.sizes.warmup_examples)
        )
        warm = self._stage(
            k,
            "warmup",
            r.train_student(f"{base}/warmup", student, warm_data.outputs["candidates"], seed=seed + 2, warmup=True),
        )
        probe = self._stage(
            k, "probe-data", r.generate(f"{base}/probe-data", teacher, seed=seed + 3, prompts=c.sizes.probe_prompts)
        )
        scores = self._stage(k, "scores", r.score(f"{base}/scores", warm.outputs["model"], probe.outputs["candidates"]))
        pairs = self._stage(
            k, "pairs", r.assemble(f"{base}/pairs", probe.outputs["candidates"], scores.outputs["scores"])
        )
        scored, paired = ScoreMetrics.from_metrics(scores.metrics), AssembleMetrics.from_metrics(pairs.metrics)
        row = IterationSummary(
            k,
            candidates=int(scored.candidates),
            groups=int(paired.groups),
            pairs=int(paired.pairs),
            influence_mean=scored.influence_mean,
            influence_min=scored.influence_min,
            influence_max=scored.influence_max,
            positive_share_raw=scored.positive_share_raw,
            positive_share_centred=scored.positive_share_centred,
            shared_step_influence=scored.shared_step_influence,
            influence_mode=scored.mode,
            audit=self._audit(k, scored),
        )
        if row.pairs:
            dpo = self._stage(k, "dpo", r.train_teacher(f"{base}/dpo", teacher, pairs.outputs["pairs"], seed=seed + 4))
            # A LoRA run publishes an adapter on top of this teacher; a full fine-tune, a whole new model.
            teacher = (
                teacher.with_adapter(dpo.outputs["adapter"])
                if "adapter" in dpo.outputs
                else LoopModel.stored(dpo.outputs["model"])
            )
            trained = TrainTeacherMetrics.from_metrics(dpo.metrics)
            row.dpo_reward_margin = trained.reward_margin_last
            row.dpo_reward_accuracy = trained.reward_accuracy_last
            if trained.heldout_pairs:
                row.heldout_pairs = int(trained.heldout_pairs)
                row.heldout_reward_margin = trained.heldout_reward_margin
                row.heldout_reward_accuracy = trained.heldout_reward_accuracy
        else:
            row.teacher_unchanged_reason = (
                f"no preference pairs: no prompt group had both a helpful and a harmful candidate "
                f"({int(paired.positive)} helpful, {int(paired.negative)} harmful in {int(paired.groups)} groups)"
            )
            log.warning(
                f"{row.teacher_unchanged_reason}: teacher unchanged",
                extra={"loop_id": self.loop_id, "stage": "dpo", "iteration": k},
            )
        train_request = r.generate(f"{base}/train-data", teacher, seed=seed + 5, target=c.sizes.train_examples)
        train_data = self._stage(k, "train-data", train_request)
        trained_student = self._stage(
            k,
            "student",
            r.train_student(f"{base}/student", self.base_student, train_data.outputs["candidates"], seed=seed + 6),
        )
        student = LoopModel.stored(trained_student.outputs["model"])
        # On the reference rows influence was measured on (the first influence.reference_size of them).
        reference_loss = self._stage(
            k,
            "student-reference-loss",
            r.evaluate(f"{base}/student-reference-loss", student, "reference", limit=int(scored.reference_rows)),
        )
        row.student_reference_loss = EvaluateMetrics.from_metrics(reference_loss.metrics).loss
        row.teacher_adapters = list(teacher.adapter_uris)
        # The teacher service serves a request's version under the name the request gives it (teacher_version).
        row.teacher_version = train_request.teacher_version or teacher.label
        row.scores_uri, row.pairs_uri = scores.outputs["scores"].uri, pairs.outputs["pairs"].uri
        row.train_data_uri = train_data.outputs["candidates"].uri
        row.seconds = round(watch.elapsed, 1)
        self.last_train_data, self.last_sft_seed = train_data, seed + 6
        if k == 1:
            self.first_warmup = warm
        metrics = {
            "iteration": k,
            "pairs": row.pairs,
            "student_reference_loss": row.student_reference_loss,
            "influence_mean": row.influence_mean,
            "positive_share_raw": row.positive_share_raw,
            "positive_share_centred": row.positive_share_centred,
            "seconds": row.seconds,
        }
        if row.dpo_reward_margin is not None:
            metrics["dpo_reward_margin"] = row.dpo_reward_margin
        self.on_event("round_finished", k, "round", metrics=metrics)
        return teacher, student, row

    def _rounds(self):
        """Iteration numbers: K of them, or (continuous) until max_rounds / patience / stop."""
        c = self.config
        best, since_best, k = math.inf, 0, 0
        while True:
            k += 1
            if not c.continuous and k > c.iterations:
                return
            if c.continuous and c.max_rounds is not None and k > c.max_rounds:
                return
            yield k
            loss = self.rows[-1].student_reference_loss
            best, since_best = (loss, 0) if loss < best else (best, since_best + 1)
            if c.continuous and c.patience is not None and since_best >= c.patience:
                log.info("student stopped improving", extra={"loop_id": self.loop_id, "stage": "loop", "iteration": k})
                return

    def run(self) -> dict:
        """All rounds, then the evaluation; writes and returns ``summary.json``.

        After every round ``rounds.jsonl`` gets the round's row and ``summary.json`` is refreshed (status
        ``running``), so a report can follow a continuous loop. A stop request (``should_stop``) ends the
        loop between units of work with the completed rounds kept and ``summary.json`` marked ``stopped``.
        """
        c, watch = self.config, Stopwatch()
        self.state = self._load_state()
        resumed = bool(self.state["stages"])
        if resumed and self.state.get("status") == "running":  # picked up after its process died (not a rerun)
            self._count_resume()
        log.info("loop resumed" if resumed else "loop started", extra={"loop_id": self.loop_id, "stage": "loop"})
        self.requests = self.prepare()
        self.store.put_json(f"{self.prefix}/config.json", to_dict(c))
        self._save_state("running")
        base_teacher, base_student = self.base_teacher, self.base_student
        teacher, student = base_teacher, base_student
        self.teachers = [base_teacher]  # every version that wrote data: 0 = un-updated, then one per DPO round
        status, evaluation = "succeeded", {}
        try:
            for k in self._rounds():
                teacher, student, row = self.run_iteration(k, teacher, student)
                self.rows.append(row)
                if teacher != self.teachers[-1]:
                    self.teachers.append(teacher)
                self.store.put_jsonl(f"{self.prefix}/{ROUNDS}", [to_dict(r) for r in self.rows])
                self._write_summary("running", {}, watch)
            evaluation = self.evaluate(base_teacher, teacher, student)
        except Cancelled:
            if self.interrupted():
                self._save_state("running")  # a restarted controller picks it up from here
                log.info("loop interrupted by shutdown", extra={"loop_id": self.loop_id, "stage": "loop"})
                raise
            status = "stopped"
            log.info("loop stopped", extra={"loop_id": self.loop_id, "stage": "loop"})
        except MontessoriError as err:
            # A failure is final: a restarted controller must not silently retry it (StartLoop with
            # the same loop_id does, reusing every completed stage).
            self.state["error"] = printable(str(err))
            self._save_state("failed")
            raise
        except Exception as err:  # a bug: recorded as failed too, or every restart would resume it and crash again
            self.state["error"] = printable(f"internal error ({type(err).__name__}: {err})")
            self._save_state("failed")
            raise
        summary = self._write_summary(status, evaluation, watch)
        self.state["resumes_without_progress"] = 0
        self._save_state(status)
        self.on_event("loop_finished", 0, "loop", metrics={"seconds": summary["seconds"], "rounds": len(self.rows)})
        log.info(
            "loop finished",
            extra={"loop_id": self.loop_id, "stage": "loop", "metrics": {"seconds": summary["seconds"]}},
        )
        return summary

    def _write_summary(self, status: str, evaluation: dict, watch: Stopwatch) -> dict:
        summary = {
            "loop_id": self.loop_id,
            "status": status,
            "code_version": code_version(),
            "store": self.store.uri(self.prefix),
            "stopped": status == "stopped",
            "iterations": [to_dict(r) for r in self.rows],
            "evaluation": evaluation,
            "seconds": round(watch.elapsed, 1),
        }
        ref = self.store.put_json(f"{self.prefix}/summary.json", summary)
        summary["summary_uri"] = ref.uri
        summary["summary_sha256"] = ref.sha256
        return summary

    def _audit(self, k: int, scored: ScoreMetrics) -> dict:
        """The approximate scorer's agreement with `exact` this round, warned about when it fell back."""
        audit = scored.audit
        if audit.get("fell_back_to_exact"):
            log.warning(
                "influence estimate disagreed with exact scoring on the audit sample; the round was re-scored exactly",
                extra={"loop_id": self.loop_id, "stage": "scores", "iteration": k, "metrics": audit},
            )
        return audit

    def evaluate(self, base_teacher: LoopModel, final_teacher: LoopModel, final_student: LoopModel) -> dict:
        """Held-out comparison of base / Montessori / Self-Instruct students, and the teacher shift (evaluation.py)."""
        if not self.rows:
            return {}
        c = self.config
        self.on_event("stage_started", 0, "evaluation")
        out = Evaluation(self).run(base_teacher, final_student, self.last_train_data, self.last_sft_seed, final_teacher)
        if c.evaluation.shift_samples:
            out["teacher_shift"] = teacher_shift(self, self.teachers, self.first_warmup)
        self.on_event(
            "evaluation_finished",
            0,
            "evaluation",
            metrics={
                k: out[k]
                for k in ("base_student_eval_loss", "montessori_student_eval_loss", "baseline_student_eval_loss")
                if k in out
            },
        )
        return out
