"""The Montessori-Instruct loop, in process (METHOD.md "Iterations" + the small-scale comparison).

Per iteration k: the current teacher writes a warm-up set and a probing set; the
current student is warmed up (optimizer state kept); influence is measured on the
probing candidates; pairs are assembled; the teacher is trained with DPO; the
updated teacher writes the training set; the student is trained with SFT from the
base student, and that student is the one probed in iteration k+1. Then the final
student is compared with a Self-Instruct baseline (same budget, un-updated teacher).
"""
from __future__ import annotations

import json
import random
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path

from common.artifacts import ArtifactStore, open_store
from common.config import to_dict
from common.jsonl import read_instruction_rows, read_jsonl
from common.logs import get_logger
from common.manifests import StageResult, code_version
from common.chat import encode_example
from common.models import ModelRef, load_tokenizer, model_dir
from common.progress import Progress, Stopwatch, no_progress
from services.controller.config import RunConfig
from services.influence import tasks as influence
from services.influence.scoring import examples_from_rows
from services.preference import tasks as preference
from services.teacher import tasks as teacher_tasks
from services.teacher.backend import TransformersBackend
from services.trainer import tasks as trainer

log = get_logger(__name__)


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
    dpo_reward_margin: float | None = None
    student_reference_loss: float = 0.0
    teacher_adapters: list[str] = field(default_factory=list)
    seconds: float = 0.0


def validate_inputs(config: RunConfig) -> None:
    """Everything that can be checked before work starts (so bad input leaves no artifact)."""
    config.data.check_files()
    for name in ("seed_path", "reference_path", "eval_path"):
        read_instruction_rows(getattr(config.data, name))
    model_dir(config.models.teacher, field="models.teacher")
    student_dir = model_dir(config.models.student, field="models.student")
    # Over-long reference/eval rows would fail mid-run: tokenise them now (tokenizer only, cheap).
    tokenizer = load_tokenizer(student_dir, field="models.student")
    window = json.loads((student_dir / "config.json").read_text()).get("max_position_embeddings", config.influence.max_length)
    limit = min(config.influence.max_length, int(window))
    for name in ("reference_path", "eval_path"):
        path = getattr(config.data, name)
        for example in examples_from_rows(read_instruction_rows(path), prefix=name, source=path):
            encode_example(tokenizer, example.user_text, example.response, max_length=limit, where=example.where)


class LoopRunner:
    """Runs one loop against one artifact store, stage by stage, recording every manifest."""

    def __init__(self, config: RunConfig, *, store: ArtifactStore | None = None, progress: Progress = no_progress):
        validate_inputs(config)
        self.config = config
        self.store = store or open_store(config.artifacts)
        self.progress = progress
        self.loop_id = config.loop_id or f"{config.name}-{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}"
        self.prefix = f"loops/{self.loop_id}"
        self.stages: list[StageResult] = []
        self._backend: TransformersBackend | None = None

    # -- helpers -------------------------------------------------------------------------

    def _path(self, result: StageResult, role: str) -> Path:
        return self.store.local_path(self.store.key_of(result.outputs[role].uri))

    def _teacher(self, ref: ModelRef) -> TransformersBackend:
        """The teacher backend for ``ref``, loaded once per version."""
        if self._backend is None or self._backend.ref != ref:
            self._backend = None
            self._backend = TransformersBackend(ref, field="models.teacher", dtype=self.config.models.dtype)
        return self._backend

    def _record(self, result: StageResult, iteration: int | str) -> StageResult:
        self.stages.append(result)
        log.info("stage done", extra={"loop_id": self.loop_id, "stage": result.stage, "iteration": iteration,
                                      "metrics": {k: v for k, v in result.metrics.items() if not isinstance(v, dict)}})
        return result

    def _generate(self, key: str, teacher: ModelRef, *, seed: int, iteration, num_prompts=None, target=None) -> StageResult:
        label = "teacher-r0" if not teacher.adapters else f"teacher-r{len(teacher.adapters)}"
        return self._record(teacher_tasks.generate(
            self.store, key, backend=self._teacher(teacher), teacher=teacher, teacher_label=label,
            seed_path=Path(self.config.data.seed_path), config=self.config.synthesis, seed=seed,
            num_prompts=num_prompts, target=target, progress=self.progress), iteration)

    # -- the loop ------------------------------------------------------------------------

    def run_iteration(self, k: int, teacher: ModelRef, student: ModelRef) -> tuple[ModelRef, ModelRef, IterationSummary]:
        """One iteration; returns the updated teacher, the new student and the summary row.

        Also keeps the iteration's training data and warm-up in ``self.last_train_data`` /
        ``self.last_warmup`` (the evaluation compares against the last ones).
        """
        c, watch = self.config, Stopwatch()
        base = f"{self.prefix}/iter-{k}"
        seed = c.seed * 1000 + k * 10
        warm_data = self._generate(f"{base}/warmup-data", teacher, seed=seed + 1, iteration=k, target=c.sizes.warmup_examples)
        warm = self._record(trainer.train_student(
            self.store, f"{base}/warmup", student=student, candidates_path=self._path(warm_data, "candidates"),
            settings=c.warmup, seed=seed + 2, save_optimizer=True, progress=self.progress), k)
        probe = self._generate(f"{base}/probe-data", teacher, seed=seed + 3, iteration=k, num_prompts=c.sizes.probe_prompts)
        scores = self._record(influence.score(
            self.store, f"{base}/scores", warmup_dir=self._path(warm, "model"), reference_path=Path(c.data.reference_path),
            candidates_path=self._path(probe, "candidates"), config=c.influence, progress=self.progress), k)
        pairs = self._record(preference.assemble(
            self.store, f"{base}/pairs", candidates_path=self._path(probe, "candidates"),
            scores_path=self._path(scores, "scores"), config=c.preference), k)
        row = IterationSummary(k, candidates=scores.metrics["candidates"], groups=pairs.metrics["groups"],
                               pairs=pairs.metrics["pairs"], influence_mean=scores.metrics["influence_mean"],
                               influence_min=scores.metrics["influence_min"], influence_max=scores.metrics["influence_max"])
        if pairs.metrics["pairs"]:
            dpo = self._record(trainer.train_teacher(
                self.store, f"{base}/dpo", teacher=teacher, pairs_path=self._path(pairs, "pairs"), settings=c.dpo,
                seed=seed + 4, progress=self.progress), k)
            role = "adapter" if c.dpo.lora else "model"
            trained = str(self._path(dpo, role))
            teacher = teacher.with_adapter(trained) if c.dpo.lora else ModelRef(trained)
            row.dpo_reward_margin = dpo.metrics["reward_margin_last"]
        else:
            log.warning("no preference pairs (no group had both helpful and harmful candidates): teacher unchanged",
                        extra={"loop_id": self.loop_id, "stage": "dpo", "iteration": k})
        train_data = self._generate(f"{base}/train-data", teacher, seed=seed + 5, iteration=k, target=c.sizes.train_examples)
        trained_student = self._record(trainer.train_student(
            self.store, f"{base}/student", student=ModelRef(c.models.student), candidates_path=self._path(train_data, "candidates"),
            settings=c.sft, seed=seed + 6, progress=self.progress), k)
        student = ModelRef(str(self._path(trained_student, "model")))
        row.student_reference_loss = influence.evaluation_loss(student, Path(c.data.reference_path), batch_size=c.evaluation.batch_size,
                                                                limit=c.influence.reference_size, field="student")
        row.teacher_adapters = list(teacher.adapters)
        row.seconds = round(watch.elapsed, 1)
        self.last_train_data, self.last_warmup = train_data, warm
        return teacher, student, row

    def run(self) -> dict:
        """All iterations, then the evaluation; writes and returns ``summary.json``."""
        c, watch = self.config, Stopwatch()
        log.info("loop started", extra={"loop_id": self.loop_id, "stage": "loop"})
        self.store.put_json(f"{self.prefix}/config.json", to_dict(c))
        base_teacher, base_student = ModelRef(c.models.teacher), ModelRef(c.models.student)
        teacher, student = base_teacher, base_student
        rows: list[IterationSummary] = []
        for k in range(1, c.iterations + 1):
            teacher, student, row = self.run_iteration(k, teacher, student)
            rows.append(row)
        evaluation = self.evaluate(base_teacher, base_student, student, self.last_train_data, self.last_warmup)
        summary = {
            "loop_id": self.loop_id,
            "code_version": code_version(),
            "store": self.store.uri(self.prefix),
            "iterations": [to_dict(r) for r in rows],
            "evaluation": evaluation,
            "seconds": round(watch.elapsed, 1),
        }
        ref = self.store.put_json(f"{self.prefix}/summary.json", summary)
        summary["summary_uri"] = ref.uri
        log.info("loop finished", extra={"loop_id": self.loop_id, "stage": "loop", "metrics": {"seconds": summary["seconds"]}})
        return summary

    def evaluate(self, base_teacher: ModelRef, base_student: ModelRef, final_student: ModelRef,
                 train_data: StageResult, warmup: StageResult) -> dict:
        """Held-out loss of base / Montessori / Self-Instruct students, and both training sets' mean influence."""
        c = self.config
        eval_path = Path(c.data.eval_path)
        out = {"eval_rows": len(read_instruction_rows(eval_path))}
        loss = lambda ref: influence.evaluation_loss(ref, eval_path, batch_size=c.evaluation.batch_size, field="student")  # noqa: E731
        out["base_student_eval_loss"] = loss(base_student)
        out["montessori_student_eval_loss"] = loss(final_student)
        if not c.evaluation.baseline:
            return out
        key = f"{self.prefix}/baseline"
        seed = c.seed * 1000 + c.iterations * 10
        montessori_rows = len(read_jsonl(self._path(train_data, "candidates")))
        base_data = self._generate(f"{key}/train-data", base_teacher, seed=seed + 5, iteration="baseline", target=montessori_rows)
        baseline = self._record(trainer.train_student(
            self.store, f"{key}/student", student=base_student, candidates_path=self._path(base_data, "candidates"),
            settings=c.sft, seed=seed + 6, limit=montessori_rows, progress=self.progress), "baseline")
        out["baseline_student_eval_loss"] = loss(ModelRef(str(self._path(baseline, "model"))))
        out["train_examples"] = {"montessori": montessori_rows, "baseline": baseline.metrics["examples"]}
        if c.evaluation.influence_sample:
            scorer = influence.build_scorer(self._path(warmup, "model"), Path(c.data.reference_path), c.influence)
            for name, data in (("montessori", train_data), ("baseline", base_data)):
                examples = influence.candidate_examples(self._path(data, "candidates"))
                sample = random.Random(c.seed).sample(examples, min(c.evaluation.influence_sample, len(examples)))
                values = [r["influence"] for r in scorer.score(sample, progress=self.progress, stage=f"evaluation: {name} influence")]
                out[f"{name}_train_influence_mean"] = statistics.fmean(values) if values else 0.0
        return out
