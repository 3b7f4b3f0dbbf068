"""The influence service's units of work on artifacts: score candidates, evaluate a student's loss."""

from __future__ import annotations

import json
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch

from common.artifacts import ArtifactStore
from common.chat import IGNORE_INDEX, encode_example, instruction_text
from common.checkpoints import StageCheckpoint, work_digest
from common.config import to_dict
from common.device import resolve_device
from common.errors import InvalidArgument
from common.jsonl import read_instruction_rows, read_jsonl
from common.logs import get_logger
from common.manifests import StageResult, code_version, input_ref, model_input, publish_manifest
from common.models import ModelRef, load_model, load_tokenizer
from common.optimizer_state import load_adamw
from common.progress import Progress, no_progress
from common.stage_results import EvaluateMetrics, ScoreMetrics
from services.influence.agreement import pair_agreement, spearman
from services.influence.config import INFLUENCE_MODES, InfluenceConfig
from services.influence.scoring import Example, InfluenceScorer, collate, examples_from_rows, per_example_losses

SCORES = "scores.jsonl"
log = get_logger(__name__)


def candidate_examples(path: Path) -> tuple[list[Example], dict[str, str]]:
    """Candidates (teacher output rows) as examples, and their prompt groups by id; rows missing fields are
    errors naming file:line. An empty candidate set is allowed (a weak teacher may keep nothing)."""
    rows = read_jsonl(path, required=("id", "instruction", "response"), allow_empty=True)
    examples = [
        Example(r["id"], instruction_text(r["instruction"], r.get("input", "")), r["response"], f"{path}:{line}")
        for line, r in enumerate(rows, start=1)
    ]
    return examples, {r["id"]: r.get("group_id", "") for r in rows}


def reference_examples(path: Path, size: int | None) -> list[Example]:
    rows = read_instruction_rows(path)
    return examples_from_rows(rows[:size] if size else rows, prefix="ref", source=str(path))


def build_scorer(warmup_dir: Path, reference_path: Path, config: InfluenceConfig) -> InfluenceScorer:
    """Load the warmed-up student (and, in faithful mode, its AdamW state) once."""
    tokenizer = load_tokenizer(warmup_dir, field="warmup")
    model = load_model(ModelRef(str(warmup_dir)), field="warmup", trainable=True)
    optimizer = load_adamw(model, warmup_dir) if config.optimizer == "faithful" else None
    return InfluenceScorer(
        model, tokenizer, reference_examples(reference_path, config.reference_size), config, optimizer
    )


def shard_bounds(total: int, index: int, count: int) -> tuple[int, int]:
    """Candidates [lo, hi) of shard ``index`` of ``count`` contiguous shards."""
    return round(index * total / count), round((index + 1) * total / count)


class ScoresCheckpoint:
    """The rows a Score job has scored so far, by phase (``scores``, then ``audit`` and ``fallback`` when the round
    is audited) and candidate id, saved to the store every ``every`` new rows (see ``common/checkpoints.py``)."""

    PHASES = ("scores", "audit", "fallback")

    def __init__(self, checkpoint: StageCheckpoint | None, every: int):
        self.checkpoint = checkpoint
        self.every = every
        self.rows: dict[str, dict[str, dict]] = {}
        self._unsaved = 0
        restored = checkpoint.restore(self._load) if checkpoint else None
        if restored is not None:
            self.rows = restored.value

    @staticmethod
    def _load(parts: dict[str, Path]) -> dict[str, dict[str, dict]]:
        phases = {}
        for name, path in parts.items():
            phase = name.removesuffix(".jsonl")
            if phase not in ScoresCheckpoint.PHASES:
                raise ValueError(f"unknown part {name}")
            phases[phase] = {row["id"]: row for row in read_jsonl(path, allow_empty=True)}
        return phases

    def done(self, phase: str) -> dict[str, dict]:
        """The rows of ``phase`` already scored, by candidate id."""
        return self.rows.get(phase, {})

    def adder(self, phase: str) -> Callable[[list[dict]], None] | None:
        """``on_scored`` for :meth:`InfluenceScorer.score`: record a chunk's rows and save every ``every`` rows
        (None when checkpoints are off)."""
        if self.checkpoint is None:
            return None

        def add(rows: list[dict]) -> None:
            self.rows.setdefault(phase, {}).update({row["id"]: dict(row) for row in rows})
            self._unsaved += len(rows)
            if self._unsaved >= self.every:
                self.save()

        return add

    def save(self) -> None:
        """Save the rows not yet saved (nothing when there are none or checkpoints are off)."""
        if self.checkpoint is None or not self._unsaved:
            return
        parts = {f"{phase}.jsonl": list(rows.values()) for phase, rows in self.rows.items()}
        if self.checkpoint.save(parts, {phase: len(rows) for phase, rows in self.rows.items()}):
            self._unsaved = 0

    def remove(self) -> None:
        if self.checkpoint is not None:
            self.checkpoint.remove()


def score(
    store: ArtifactStore,
    prefix: str,
    *,
    warmup_dir: Path,
    reference_path: Path,
    candidates_path: Path,
    config: InfluenceConfig,
    progress: Progress = no_progress,
    scorer: InfluenceScorer | None = None,
    shard: tuple[int, int] | None = None,
    request_digest: str = "",
) -> StageResult:
    """Influence of every candidate (or of shard ``(index, count)`` of them) on the warmed-up student; publish
    ``<prefix>/scores.jsonl``. Each candidate's influence depends only on the student state and itself, so the
    shards of a candidate set, merged by :func:`merge_scores`, equal one unsharded run.

    With ``config.checkpoint_every`` the scores so far are saved to ``<prefix>-checkpoint`` as they are made; a job
    of the same work (``request_digest``: the request's, see ``common.checkpoints.request_digest``; the same
    inputs, settings and shard) continues from there and publishes the same scores file, byte for byte."""
    started = time.time()
    examples, groups = candidate_examples(candidates_path)
    if shard is not None:
        lo, hi = shard_bounds(len(examples), *shard)
        examples = examples[lo:hi]
    inputs = {
        "warmup": input_ref(store, warmup_dir),
        "reference_set": input_ref(store, reference_path),
        "candidates": input_ref(store, candidates_path),
    }
    checkpoint = None
    if config.checkpoint_every and len({e.id for e in examples}) == len(examples):  # rows are kept by candidate id
        # The device kind too: scores made on one kind of device are not resumed on another (their last bits differ).
        device = resolve_device(config.device).type
        work = work_digest(
            request=request_digest,
            inputs=inputs,
            config=to_dict(config),
            shard=shard,
            device=device,
            code=code_version(),
        )
        checkpoint = StageCheckpoint(store, prefix, work, stage="score")
    saved = ScoresCheckpoint(checkpoint, config.checkpoint_every)
    scorer = scorer or build_scorer(warmup_dir, reference_path, config)
    rows = scorer.score(
        examples,
        progress=progress,
        stage=f"{prefix.rsplit('/', 1)[-1]}: influence",
        done=saved.done("scores"),
        on_scored=saved.adder("scores"),
    )
    rate = scorer.last_rate
    audit, scored_by, scored_in = {}, config.mode, config.compute_dtype
    if config.mode != "exact" and config.audit_size:
        saved.save()  # the audit and a fallback may take long too
        audit, audited = audit_agreement(scorer, examples, rows, groups, config.audit_size, progress, saved=saved)
        below = below_thresholds(audit, config)
        audit["fell_back_to_exact"] = int(bool(below))
        if below:
            log.warning(
                f"{config.mode} estimate disagrees with exact influence; re-scoring exactly",
                extra={"stage": "score", "metrics": {**below, "mode": config.mode}},
            )
            saved.save()
            rescore = [i for i in range(len(examples)) if i not in audited]
            exact_rows = scorer.score(
                [examples[i] for i in rescore],
                progress=progress,
                stage="exact fallback",
                mode="exact",
                dtype="float32",
                done=saved.done("fallback"),
                on_scored=saved.adder("fallback"),
            )
            for i, exact in zip(rescore, exact_rows):
                audited[i] = exact
            for i, row in enumerate(rows):
                row.update({k: v for k, v in audited[i].items() if k != "id"})
            scored_by, scored_in = "exact", "float32"
    with scorer.precision(scored_in):  # the reference loss and shared step of the precision the scores are in
        before, shared = scorer.base_loss, shared_step_metrics(scorer, scored_by)
    for row in rows:
        row["group_id"] = groups[row["id"]]
        row["reference_loss_before"] = before
    ref = store.put_jsonl(f"{prefix}/{SCORES}", rows)
    # Metrics are numbers (they travel as map<string, double>): one flag per mode says which one produced the scores.
    metrics = {
        **score_metrics(rows, reference_rows=scorer.reference_loss.rows, reference_loss=before, rate=rate),
        **shared,
        **{f"scored_by_{mode}": int(mode == scored_by) for mode in INFLUENCE_MODES},
        **ScoreMetrics.mode_flags(config.mode),
        **audit,
    }
    if shard is not None:
        metrics.update(shard_index=shard[0], shard_count=shard[1])
    result = publish_manifest(
        store,
        prefix,
        stage="score",
        inputs=inputs,
        config=config,
        outputs={"scores": ref},
        metrics=metrics,
        started=started,
    )
    saved.remove()
    return result


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


def merge_scores(
    store: ArtifactStore, prefix: str, *, candidates_path: Path, shard_manifests: list[dict], config: InfluenceConfig
) -> StageResult:
    """Concatenate the shards' scores in shard (= candidate) order; publish ``<prefix>/scores.jsonl`` and a
    manifest whose inputs are the shards' (warm-up, reference set) plus the whole candidate set and the shards."""
    started = time.time()
    rows = [
        row
        for manifest in shard_manifests
        for row in store.get_jsonl(store.key_of(manifest["outputs"]["scores"]["uri"]))
    ]
    expected = len(read_jsonl(candidates_path, required=("id",), allow_empty=True))
    if len(rows) != expected:
        raise InvalidArgument(f"the shards hold {len(rows)} scores for {expected} candidates", field="shards")
    ref = store.put_jsonl(f"{prefix}/{SCORES}", rows)
    first = shard_manifests[0]["metrics"]
    shard = ScoreMetrics.from_metrics(first)
    metrics = {
        **score_metrics(
            rows,
            reference_rows=shard.reference_rows,
            reference_loss=shard.reference_loss,
            rate=sum(ScoreMetrics.from_metrics(m["metrics"]).candidates_per_second for m in shard_manifests),
        ),
        "replicas": len(shard_manifests),
        **{k: first[k] for k in ("shared_step_influence", "reference_loss_shared_step") if k in first},
        **({} if not shard.mode else ScoreMetrics.mode_flags(shard.mode)),
        **merge_audits([m["metrics"] for m in shard_manifests]),
    }
    shard_inputs = shard_manifests[0]["inputs"]
    inputs = {
        "warmup": shard_inputs["warmup"],
        "reference_set": shard_inputs["reference_set"],
        "candidates": input_ref(store, candidates_path),
        "shards": [m["ref"] for m in shard_manifests],
    }
    return publish_manifest(
        store,
        prefix,
        stage="score",
        inputs=inputs,
        config=config,
        outputs={"scores": ref},
        metrics=metrics,
        started=started,
    )


def check_rows(
    model: ModelRef,
    rows_path: Path,
    *,
    max_length: int,
    limit: int | None,
    model_field: str,
    rows_field: str,
    source: str,
) -> int:
    """Tokenise (the first ``limit``) rows with the model's tokenizer as scoring and evaluation will (the cap is
    ``max_length`` or the model's context window): an over-long row is an error naming it, before any work.
    Loads the tokenizer and the model's config only; errors name a row as ``<source>:<line>``. Returns the number
    of rows checked."""
    tokenizer = load_tokenizer(model, field=model_field)
    window = json.loads((Path(model.path) / "config.json").read_text()).get("max_position_embeddings", max_length)
    rows = read_instruction_rows(rows_path)
    rows = rows[:limit] if limit else rows
    for example in examples_from_rows(rows, prefix=rows_field, source=source):
        encode_example(
            tokenizer, example.user_text, example.response, max_length=min(max_length, int(window)), where=example.where
        )
    return len(rows)


def audit_agreement(
    scorer: InfluenceScorer,
    examples: list[Example],
    rows: list[dict],
    groups: dict[str, str],
    size: int,
    progress: Progress,
    *,
    saved: ScoresCheckpoint | None = None,
) -> tuple[dict, dict[int, dict]]:
    """Score an evenly spaced sample exactly and compare it with the estimate (Spearman, pair agreement).
    Returns the metrics and the exact rows by candidate index (reused if the round falls back to exact:
    exact scores do not depend on which other candidates are scored)."""
    step = max(1, len(examples) // min(size, len(examples)))
    picked = list(range(0, len(examples), step))[:size]
    exact_rows = scorer.score(
        [examples[i] for i in picked],
        progress=progress,
        stage="audit",
        mode="exact",
        dtype="float32",  # the audit measures the whole shortcut: the estimate and its precision
        done=saved.done("audit") if saved else None,
        on_scored=saved.adder("audit") if saved else None,
    )
    exact = [r["influence"] for r in exact_rows]
    estimate = [rows[i]["influence"] for i in picked]
    metrics = {
        "audit_size": len(picked),
        "audit_spearman": spearman(exact, estimate),
        "audit_pair_agreement": pair_agreement([groups[examples[i].id] for i in picked], exact, estimate),
    }
    return metrics, dict(zip(picked, exact_rows))


def below_thresholds(audit: dict, config: InfluenceConfig) -> dict:
    """The audit measures that fall below their configured minimum, with the minimum (empty: the estimate passes)."""
    below = {}
    for measure, field_name in (("audit_spearman", "min_agreement"), ("audit_pair_agreement", "min_pair_agreement")):
        minimum = getattr(config, field_name)
        if minimum is not None and audit[measure] < minimum:
            below[measure] = audit[measure]
            below[field_name] = minimum
    return below


def score_metrics(rows: list[dict], *, reference_rows: int, reference_loss: float, rate: float) -> dict:
    """The metrics of a scores file (also used when shards scored on several replicas are merged): those of the
    score used for pairs (``influence``), and the share of positive candidates under both raw and centred scores."""
    values = [r["influence"] for r in rows]
    share = lambda key: sum(r.get(key, r["influence"]) > 0 for r in rows) / len(rows) if rows else 0.0  # noqa: E731
    return ScoreMetrics(
        candidates=len(rows),
        reference_rows=reference_rows,
        reference_loss=reference_loss,
        influence_mean=statistics.fmean(values) if values else 0.0,
        influence_min=min(values, default=0.0),
        influence_max=max(values, default=0.0),
        positive=sum(v > 0 for v in values),
        negative=sum(v < 0 for v in values),
        candidates_per_second=rate,
        positive_share_raw=share("influence_raw"),
        positive_share_centred=share("influence_centred"),
    ).to_metrics()


def shared_step_metrics(scorer: InfluenceScorer, scored_by: str) -> dict:
    """The raw influence of the zero-gradient step (what every raw score shares): exact when the round was scored
    exactly, else its first-order estimate (no extra reference pass)."""
    if scored_by == "exact":
        return {"shared_step_influence": scorer.shared_step_influence, "reference_loss_shared_step": scorer.shared_loss}
    return {"shared_step_influence": scorer.estimated_shared_influence()}


#: Per-row held-out losses written by :func:`evaluate`.
LOSSES = "losses.jsonl"


@torch.no_grad()
def row_losses(model, tokenizer, examples: list[Example], *, batch_size: int, max_length: int) -> list[float | None]:
    """Each example's mean response-only token loss, in the given order; ``None`` for a row whose response was
    cut away entirely (it has no loss). Batches are formed by length, as for the reference loss."""
    encoded = [
        encode_example(tokenizer, e.user_text, e.response, max_length=max_length, where=e.where) for e in examples
    ]
    order = sorted(range(len(encoded)), key=lambda i: len(encoded[i].input_ids))
    losses: list[float | None] = [None] * len(encoded)
    model.train(False)
    device = next(model.parameters()).device  # the batches follow the model; the losses stay fp32 (per_example_losses)
    for start in range(0, len(order), batch_size):
        chunk = order[start : start + batch_size]
        batch = {
            key: value.to(device) for key, value in collate([encoded[i] for i in chunk], tokenizer.pad_token_id).items()
        }
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        values = per_example_losses(logits, batch["labels"])
        for i, value in zip(chunk, values.tolist()):
            if any(label != IGNORE_INDEX for label in encoded[i].labels[1:]):
                losses[i] = value
    return losses


def _rows_and_losses(
    model: ModelRef,
    rows_path: Path,
    *,
    batch_size: int,
    max_length: int,
    limit: int | None,
    field: str,
    device: str | torch.device,
) -> tuple[list[dict], list[float | None]]:
    if batch_size < 1:
        raise InvalidArgument("must be >= 1", field="batch_size")
    device = device if isinstance(device, torch.device) else resolve_device(device)
    tokenizer = load_tokenizer(model, field=field)
    student = load_model(model, field=field, device=device)  # fp32 weights on every device, as influence scoring
    rows = read_instruction_rows(rows_path)
    rows = rows[:limit] if limit else rows
    examples = examples_from_rows(rows, prefix="eval", source=str(rows_path))
    window = int(getattr(student.config, "max_position_embeddings", max_length))
    return rows, row_losses(student, tokenizer, examples, batch_size=batch_size, max_length=min(max_length, window))


def _mean(losses: list[float | None]) -> float:
    counted = [v for v in losses if v is not None]
    return statistics.fmean(counted) if counted else 0.0


def evaluation_loss(
    model: ModelRef,
    rows_path: Path,
    *,
    batch_size: int = 16,
    max_length: int = 512,
    limit: int | None = None,
    field: str = "model",
    device: str | torch.device = "auto",
) -> float:
    """Mean response-only loss of ``model`` on (the first ``limit`` rows of) an Alpaca-style set: the mean of
    the per-row means (a row weighs the same whatever its length), rows without response tokens left out.
    ``device``: where the model runs (a device setting, see ``common.device``)."""
    return _mean(
        _rows_and_losses(
            model, rows_path, batch_size=batch_size, max_length=max_length, limit=limit, field=field, device=device
        )[1]
    )


def evaluate(
    store: ArtifactStore,
    prefix: str,
    *,
    model: ModelRef,
    rows_path: Path,
    batch_size: int = 16,
    max_length: int = 512,
    limit: int | None = None,
    field: str = "model",
    progress: Progress = no_progress,
    device: str | torch.device = "auto",
) -> StageResult:
    """Held-out loss of ``model`` per row; publish ``<prefix>/losses.jsonl`` (row index, loss, response tokens'
    category) so that students can be compared row by row. Metric ``loss``: the mean, as :func:`evaluation_loss`."""
    started = time.time()
    progress("evaluate", 0, 1)
    rows, losses = _rows_and_losses(
        model, rows_path, batch_size=batch_size, max_length=max_length, limit=limit, field=field, device=device
    )
    out = [
        {"row": i, "loss": loss, "category": str(row.get("category", ""))}
        for i, (row, loss) in enumerate(zip(rows, losses))
    ]
    ref = store.put_jsonl(f"{prefix}/{LOSSES}", out)
    progress("evaluate", 1, 1)
    inputs = {"model": model_input(store, model), "rows": input_ref(store, rows_path)}
    config = {"batch_size": batch_size, "max_length": max_length, "limit": limit}
    return publish_manifest(
        store,
        prefix,
        stage="evaluate",
        inputs=inputs,
        config=config,
        outputs={"losses": ref},
        metrics=EvaluateMetrics(
            loss=_mean(losses), rows=len(out), rows_without_loss=sum(v is None for v in losses)
        ).to_metrics(),
        started=started,
    )
