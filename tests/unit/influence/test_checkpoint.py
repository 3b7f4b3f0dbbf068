"""Score jobs checkpoint to the store and resume: an interrupted job sent again publishes the same scores, byte for
byte, as one that ran through; a checkpoint of other work, or one that does not verify, is discarded, not used."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass

import pytest

from common.artifacts import ArtifactRef, LocalArtifactStore
from common.chat import instruction_text
from common.checkpoints import STATE, SUFFIX
from common.errors import Cancelled
from common.models import ModelRef
from montessori.v1 import common_pb2, influence_pb2
from services.influence import stages
from services.influence.scoring import InfluenceScorer
from services.trainer.config import SFTSettings
from services.trainer.sft import train_sft
from tests.unit.influence.constructed_estimates import reverse_estimates

#: 12 candidates in 3 prompt groups.
CANDIDATES = 12


@dataclass
class Inputs:
    store: LocalArtifactStore
    warmup: ArtifactRef
    reference: ArtifactRef
    candidates: ArtifactRef


@pytest.fixture(scope="module")
def inputs(tiny_student, seed_rows, reference_rows, tmp_path_factory) -> Inputs:
    """A store holding a warmed-up student (with its AdamW state), 8 reference rows and 12 candidates."""
    root = tmp_path_factory.mktemp("checkpoint")
    store = LocalArtifactStore(root / "store")
    warmup = root / "warmup"
    examples = [(instruction_text(r["instruction"], r["input"]), r["output"]) for r in seed_rows[:8]]
    settings = SFTSettings(
        learning_rate=1e-3, batch_size=4, gradient_accumulation_steps=1, lr_scheduler="constant", warmup_ratio=0.0
    )
    train_sft(ModelRef(str(tiny_student)), examples, settings, warmup, seed=0, save_optimizer=True)
    candidates = [
        {"id": f"c{i}", "group_id": f"g{i // 4}", "instruction": r["instruction"], "response": r["output"]}
        for i, r in enumerate(seed_rows[100 : 100 + CANDIDATES])
    ]
    return Inputs(
        store,
        store.put_dir("inputs/warmup", warmup),
        store.put_jsonl("inputs/reference.jsonl", reference_rows[:8]),
        store.put_jsonl("inputs/candidates.jsonl", candidates),
    )


def request(inputs: Inputs, prefix: str, **settings) -> influence_pb2.ScoreRequest:
    ref = lambda r: common_pb2.ArtifactRef(uri=r.uri, sha256=r.sha256)  # noqa: E731
    return influence_pb2.ScoreRequest(
        request_id=f"{prefix}:score",
        student=common_pb2.ModelSpec(artifact=ref(inputs.warmup)),
        reference=ref(inputs.reference),
        candidates=ref(inputs.candidates),
        output_prefix=prefix,
        influence=influence_pb2.InfluenceSettings(**settings),
    )


class Recorder:
    """A progress sink that records every report and cancels the job (a preemption) once ``stage`` reaches ``at``."""

    def __init__(self, stage: str | None = None, at: int = 0):
        self.stage, self.at, self.reports = stage, at, []

    def __call__(self, stage: str, done: int, total: int, metrics: dict | None = None) -> None:
        self.reports.append((stage, done, total))
        if self.stage is not None and stage.endswith(self.stage) and done >= self.at:
            raise Cancelled("cancelled")

    def first(self, stage: str) -> int:
        return next(done for name, done, _ in self.reports if name.endswith(stage))


def run(inputs: Inputs, message, progress) -> None:
    stages.score(inputs.store, message)(progress)


def published(store: LocalArtifactStore, prefix: str) -> dict[str, bytes]:
    """Every file of the output folder but the manifest (its timings differ), by name."""
    return {
        key.removeprefix(f"{prefix}/"): store.get_bytes(key)
        for key in store.list(prefix)
        if key != f"{prefix}/manifest.json"
    }


def checkpoint_state(store: LocalArtifactStore, prefix: str) -> dict:
    return store.get_json(f"{prefix}{SUFFIX}/{STATE}")


@pytest.fixture()
def count_exact_steps(monkeypatch):
    """How many candidates take an exact step (one-at-a-time scoring)."""
    calls = []
    original = InfluenceScorer.score_one

    def score_one(self, example):
        calls.append(example)
        return original(self, example)

    monkeypatch.setattr(InfluenceScorer, "score_one", score_one)
    return calls


FAITHFUL = {"optimizer": "faithful", "checkpoint_every": 2}
BATCHED = {"optimizer": "sgd", "sgd_learning_rate": 0.05, "candidate_batch_size": 3, "checkpoint_every": 2}
FALLBACK = {  # a projected round re-scored exactly (its estimate reversed against the exact order, see the test)
    "optimizer": "sgd",
    "mode": "projected",
    "projection_dim": 1,
    "audit_size": 6,
    "min_pair_agreement": 1.0,
    "checkpoint_every": 2,
}


@pytest.mark.parametrize(
    "settings,stage,at,resumed",
    [
        (FAITHFUL, "influence", 5, 4),  # saved at 2 and 4; the 5th is lost with the preemption
        (BATCHED, "influence", 7, 9),  # chunks of 3 are saved whole: the chunk that reached 7 (up to 9) was saved
        (FALLBACK, "audit", 3, 2),  # the estimates were saved before the audit, then the audit at 2
        (FALLBACK, "exact fallback", 3, 2),
    ],
    ids=["faithful", "batched", "audit", "fallback"],
)
def test_an_interrupted_score_resumes_and_publishes_the_same_scores(
    inputs, settings, stage, at, resumed, caplog, monkeypatch
):
    name = f"{stage.replace(' ', '-')}-{settings.get('mode', 'exact')}-{settings['optimizer']}"
    if settings is FALLBACK:
        # Whether a real one-number projection's pairs disagree is the draw's; the fallback must surely run.
        reverse_estimates(monkeypatch, {f"c{i}": f"g{i // 4}" for i in range(CANDIDATES)})
    store = inputs.store
    run(inputs, request(inputs, f"full-{name}", **settings), Recorder())
    assert not store.list(f"full-{name}{SUFFIX}")  # a finished job leaves no checkpoint

    message = request(inputs, f"resumed-{name}", **settings)
    with pytest.raises(Cancelled):
        run(inputs, message, Recorder(stage, at))
    assert not store.exists(f"resumed-{name}/manifest.json")  # nothing published
    assert checkpoint_state(store, f"resumed-{name}")["meta"].get(stage.split()[-1].replace("influence", "scores"))

    logger = logging.getLogger("montessori.common.checkpoints")
    logger.addHandler(caplog.handler)
    again = Recorder()
    try:
        with caplog.at_level(logging.INFO, logger=logger.name):
            run(inputs, message, again)  # the same request, sent again
    finally:
        logger.removeHandler(caplog.handler)
    assert again.first(stage) == resumed  # progress starts from the checkpointed count
    assert any(r.getMessage() == "resumed from checkpoint" for r in caplog.records)
    full, resumed_files = published(store, f"full-{name}"), published(store, f"resumed-{name}")
    assert list(full) == ["scores.jsonl"] and full == resumed_files  # byte for byte
    rows = [json.loads(line) for line in resumed_files["scores.jsonl"].decode().splitlines()]
    assert [r["id"] for r in rows] == [f"c{i}" for i in range(CANDIDATES)]
    assert len({r["influence"] for r in rows}) > 1  # the comparison can tell candidates apart
    assert not store.list(f"resumed-{name}{SUFFIX}")  # deleted once published
    manifests = [store.get_json(f"{p}-{name}/manifest.json")["metrics"] for p in ("full", "resumed")]
    for metrics in manifests:
        metrics.pop("candidates_per_second")
    assert manifests[0] == manifests[1]


def test_a_resumed_job_scores_only_the_candidates_left(inputs, count_exact_steps):
    message = request(inputs, "left", **FAITHFUL)
    with pytest.raises(Cancelled):
        run(inputs, message, Recorder("influence", 7))
    assert len(count_exact_steps) == 7 and checkpoint_state(inputs.store, "left")["meta"] == {"scores": 6}
    count_exact_steps.clear()
    run(inputs, message, Recorder())
    assert len(count_exact_steps) == CANDIDATES - 6


def test_a_checkpoint_of_another_request_is_removed_not_resumed(inputs, count_exact_steps, caplog):
    store = inputs.store
    with pytest.raises(Cancelled):
        run(inputs, request(inputs, "other", **FAITHFUL, reference_size=4), Recorder("influence", 5))
    interrupted = store.get_jsonl(f"other{SUFFIX}/v{checkpoint_state(store, 'other')['version']}/scores.jsonl")
    count_exact_steps.clear()
    logger = logging.getLogger("montessori.common.checkpoints")
    logger.addHandler(caplog.handler)
    progress = Recorder()
    try:
        with caplog.at_level(logging.WARNING, logger=logger.name):
            run(inputs, request(inputs, "other", **FAITHFUL), progress)  # same prefix, another reference set
    finally:
        logger.removeHandler(caplog.handler)
    assert len(count_exact_steps) == CANDIDATES and progress.first("influence") == 1  # scored from zero
    assert any("written for other work" in r.getMessage() for r in caplog.records)
    scores = {r["id"]: r["influence"] for r in store.get_jsonl("other/scores.jsonl")}
    assert all(scores[r["id"]] != r["influence"] for r in interrupted)  # none of the other request's scores
    assert not store.list(f"other{SUFFIX}")


@pytest.mark.parametrize("damage", ["replaced", "corrupted", "state"])
def test_a_checkpoint_that_does_not_verify_is_discarded(inputs, count_exact_steps, damage):
    """A part replaced through the store (its own digest fine, not the state's), a part whose bytes changed on
    disk (the store's digest check fails) or an unreadable state: scoring restarts from zero, the job succeeds."""
    store = inputs.store
    prefix = f"damaged-{damage}"
    run(inputs, request(inputs, f"{prefix}-full", **FAITHFUL), Recorder())
    message = request(inputs, prefix, **FAITHFUL)
    with pytest.raises(Cancelled):
        run(inputs, message, Recorder("influence", 5))
    part = f"{prefix}{SUFFIX}/v{checkpoint_state(store, prefix)['version']}/scores.jsonl"
    rows = store.get_jsonl(part)
    rows[0]["influence"] += 1.0
    if damage == "replaced":
        store.put_jsonl(part, rows)
    elif damage == "corrupted":
        store.local_path(part).write_text("".join(json.dumps(r) + "\n" for r in rows))
    else:
        (store.root / f"{prefix}{SUFFIX}" / STATE).write_text("{not json")
    count_exact_steps.clear()
    progress = Recorder()
    run(inputs, message, progress)
    assert len(count_exact_steps) == CANDIDATES and progress.first("influence") == 1
    assert published(store, prefix) == published(store, f"{prefix}-full")
    assert not store.list(f"{prefix}{SUFFIX}")


def test_checkpoint_every_zero_writes_no_checkpoint(inputs, monkeypatch):
    saves = []
    monkeypatch.setattr("common.checkpoints.StageCheckpoint.save", lambda self, *a, **k: saves.append(a))
    with pytest.raises(Cancelled):
        run(inputs, request(inputs, "off", optimizer="faithful", checkpoint_every=0), Recorder("influence", 5))
    assert saves == [] and not inputs.store.list(f"off{SUFFIX}")
