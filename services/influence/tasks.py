"""The influence service's units of work on artifacts: score candidates, evaluate a student's loss."""
from __future__ import annotations

import statistics
import time
from pathlib import Path

import torch

from common.artifacts import ArtifactStore
from common.chat import IGNORE_INDEX, encode_example, instruction_text
from common.errors import InvalidArgument
from common.jsonl import read_instruction_rows, read_jsonl
from common.logs import get_logger
from common.manifests import StageResult, input_ref, model_input, publish_manifest
from common.models import ModelRef, load_model, load_tokenizer
from common.progress import Progress, no_progress
from services.influence.agreement import pair_agreement, spearman
from services.influence.config import INFLUENCE_MODES, InfluenceConfig
from services.influence.optimizer_state import load_adamw
from services.influence.scoring import Example, InfluenceScorer, collate, examples_from_rows, per_example_losses

SCORES = "scores.jsonl"
log = get_logger(__name__)


def candidate_examples(path: Path) -> tuple[list[Example], dict[str, str]]:
    """Candidates (teacher output rows) as examples, and their prompt groups by id; rows missing fields are
    errors naming file:line. An empty candidate set is allowed (a weak teacher may keep nothing)."""
    rows = read_jsonl(path, required=("id", "instruction", "response"), allow_empty=True)
    examples = [Example(r["id"], instruction_text(r["instruction"], r.get("input", "")), r["response"], f"{path}:{line}")
                for line, r in enumerate(rows, start=1)]
    return examples, {r["id"]: r.get("group_id", "") for r in rows}


def reference_examples(path: Path, size: int | None) -> list[Example]:
    rows = read_instruction_rows(path)
    return examples_from_rows(rows[:size] if size else rows, prefix="ref", source=str(path))


def build_scorer(warmup_dir: Path, reference_path: Path, config: InfluenceConfig) -> InfluenceScorer:
    """Load the warmed-up student (and, in faithful mode, its AdamW state) once."""
    tokenizer = load_tokenizer(warmup_dir, field="warmup")
    model = load_model(ModelRef(str(warmup_dir)), field="warmup", trainable=True)
    optimizer = load_adamw(model, warmup_dir) if config.optimizer == "faithful" else None
    return InfluenceScorer(model, tokenizer, reference_examples(reference_path, config.reference_size), config, optimizer)


def score(store: ArtifactStore, prefix: str, *, warmup_dir: Path, reference_path: Path, candidates_path: Path,
          config: InfluenceConfig, progress: Progress = no_progress, scorer: InfluenceScorer | None = None) -> StageResult:
    """Influence of every candidate on the warmed-up student; publish ``<prefix>/scores.jsonl``."""
    started = time.time()
    examples, groups = candidate_examples(candidates_path)
    scorer = scorer or build_scorer(warmup_dir, reference_path, config)
    rows = scorer.score(examples, progress=progress, stage=f"{prefix.rsplit('/', 1)[-1]}: influence")
    for row in rows:
        row["group_id"] = groups[row["id"]]
        row["reference_loss_before"] = scorer.base_loss
    rate = scorer.last_rate
    audit, scored_by = {}, config.mode
    if config.mode != "exact" and config.audit_size:
        audit, audited = audit_agreement(scorer, examples, rows, groups, config.audit_size, progress)
        below = below_thresholds(audit, config)
        audit["fell_back_to_exact"] = int(bool(below))
        if below:
            log.warning(f"{config.mode} estimate disagrees with exact influence; re-scoring exactly",
                        extra={"stage": "score", "metrics": {**below, "mode": config.mode}})
            rescore = [i for i in range(len(examples)) if i not in audited]
            exact_rows = scorer.score([examples[i] for i in rescore], progress=progress, stage="exact fallback", mode="exact")
            for i, exact in zip(rescore, exact_rows):
                audited[i] = exact
            for i, row in enumerate(rows):
                row.update({k: v for k, v in audited[i].items() if k != "id"})
            scored_by = "exact"
    ref = store.put_jsonl(f"{prefix}/{SCORES}", rows)
    # Metrics are numbers (they travel as map<string, double>): one flag per mode says which one produced the scores.
    metrics = {**score_metrics(rows, reference_rows=scorer.reference_loss.rows, reference_loss=scorer.base_loss, rate=rate),
               **shared_step_metrics(scorer, scored_by),
               **{f"scored_by_{mode}": int(mode == scored_by) for mode in INFLUENCE_MODES}, **audit}
    inputs = {"warmup": input_ref(store, warmup_dir), "reference_set": input_ref(store, reference_path), "candidates": input_ref(store, candidates_path)}
    return publish_manifest(store, prefix, stage="score", inputs=inputs, config=config, outputs={"scores": ref},
                            metrics=metrics, started=started)


def audit_agreement(scorer: InfluenceScorer, examples: list[Example], rows: list[dict], groups: dict[str, str], size: int,
                    progress: Progress) -> tuple[dict, dict[int, dict]]:
    """Score an evenly spaced sample exactly and compare it with the estimate (Spearman, pair agreement).
    Returns the metrics and the exact rows by candidate index (reused if the round falls back to exact:
    exact scores do not depend on which other candidates are scored)."""
    step = max(1, len(examples) // min(size, len(examples)))
    picked = list(range(0, len(examples), step))[:size]
    exact_rows = scorer.score([examples[i] for i in picked], progress=progress, stage="audit", mode="exact")
    exact = [r["influence"] for r in exact_rows]
    estimate = [rows[i]["influence"] for i in picked]
    metrics = {"audit_size": len(picked), "audit_spearman": spearman(exact, estimate),
               "audit_pair_agreement": pair_agreement([groups[examples[i].id] for i in picked], exact, estimate)}
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
    return {
        "candidates": len(rows), "reference_rows": reference_rows, "reference_loss": reference_loss,
        "influence_mean": statistics.fmean(values) if values else 0.0, "influence_min": min(values, default=0.0),
        "influence_max": max(values, default=0.0), "positive": sum(v > 0 for v in values),
        "negative": sum(v < 0 for v in values), "candidates_per_second": rate,
        "positive_share_raw": share("influence_raw"), "positive_share_centred": share("influence_centred"),
    }


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
    encoded = [encode_example(tokenizer, e.user_text, e.response, max_length=max_length, where=e.where) for e in examples]
    order = sorted(range(len(encoded)), key=lambda i: len(encoded[i].input_ids))
    losses: list[float | None] = [None] * len(encoded)
    model.train(False)
    for start in range(0, len(order), batch_size):
        chunk = order[start:start + batch_size]
        batch = collate([encoded[i] for i in chunk], tokenizer.pad_token_id)
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        values = per_example_losses(logits, batch["labels"])
        for i, value in zip(chunk, values.tolist()):
            if any(label != IGNORE_INDEX for label in encoded[i].labels[1:]):
                losses[i] = value
    return losses


def _rows_and_losses(model: ModelRef, rows_path: Path, *, batch_size: int, max_length: int, limit: int | None,
                     field: str) -> tuple[list[dict], list[float | None]]:
    if batch_size < 1:
        raise InvalidArgument("must be >= 1", field="batch_size")
    tokenizer = load_tokenizer(model, field=field)
    student = load_model(model, field=field)
    rows = read_instruction_rows(rows_path)
    rows = rows[:limit] if limit else rows
    examples = examples_from_rows(rows, prefix="eval", source=str(rows_path))
    window = int(getattr(student.config, "max_position_embeddings", max_length))
    return rows, row_losses(student, tokenizer, examples, batch_size=batch_size, max_length=min(max_length, window))


def _mean(losses: list[float | None]) -> float:
    counted = [v for v in losses if v is not None]
    return statistics.fmean(counted) if counted else 0.0


def evaluation_loss(model: ModelRef, rows_path: Path, *, batch_size: int = 16, max_length: int = 512,
                    limit: int | None = None, field: str = "model") -> float:
    """Mean response-only loss of ``model`` on (the first ``limit`` rows of) an Alpaca-style set: the mean of
    the per-row means (a row weighs the same whatever its length), rows without response tokens left out."""
    return _mean(_rows_and_losses(model, rows_path, batch_size=batch_size, max_length=max_length, limit=limit,
                                  field=field)[1])


def evaluate(store: ArtifactStore, prefix: str, *, model: ModelRef, rows_path: Path, batch_size: int = 16,
             max_length: int = 512, limit: int | None = None, field: str = "model",
             progress: Progress = no_progress) -> StageResult:
    """Held-out loss of ``model`` per row; publish ``<prefix>/losses.jsonl`` (row index, loss, response tokens'
    category) so that students can be compared row by row. Metric ``loss``: the mean, as :func:`evaluation_loss`."""
    started = time.time()
    progress("evaluate", 0, 1)
    rows, losses = _rows_and_losses(model, rows_path, batch_size=batch_size, max_length=max_length, limit=limit, field=field)
    out = [{"row": i, "loss": loss, "category": str(row.get("category", ""))} for i, (row, loss) in enumerate(zip(rows, losses))]
    ref = store.put_jsonl(f"{prefix}/{LOSSES}", out)
    progress("evaluate", 1, 1)
    inputs = {"model": model_input(store, model), "rows": input_ref(store, rows_path)}
    config = {"batch_size": batch_size, "max_length": max_length, "limit": limit}
    return publish_manifest(store, prefix, stage="evaluate", inputs=inputs, config=config, outputs={"losses": ref},
                            metrics={"loss": _mean(losses), "rows": len(out),
                                     "rows_without_loss": sum(v is None for v in losses)}, started=started)
