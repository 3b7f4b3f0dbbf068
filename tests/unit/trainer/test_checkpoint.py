"""Training jobs checkpoint to the store every N optimizer steps and resume: an interrupted SFT or DPO job sent again
publishes the same folder, byte for byte, as one that ran through (and as one that saved no checkpoints)."""

from __future__ import annotations

import logging
from dataclasses import dataclass

import pytest

from common.artifacts import ArtifactRef, LocalArtifactStore
from common.checkpoints import STATE, SUFFIX
from common.errors import Cancelled
from montessori.v1 import common_pb2, trainer_pb2
from services.trainer import stages
from services.trainer.callbacks import TRAINER_PART

#: Every run here has 6 optimizer steps and is preempted at step 5.
STEPS = 6
#: Checkpoint intervals: the last checkpoint before step 5 is mid-epoch either way (SFT: 2 steps an epoch, DPO: 3).
EVERY = {"sft": 3, "dpo": 2}


@dataclass
class Inputs:
    store: LocalArtifactStore
    candidates: ArtifactRef
    pairs: ArtifactRef


@pytest.fixture(scope="module")
def inputs(seed_rows, tmp_path_factory) -> Inputs:
    store = LocalArtifactStore(tmp_path_factory.mktemp("checkpoint") / "store")
    candidates = [{"instruction": r["instruction"], "response": r["output"]} for r in seed_rows[:8]]
    prompt = "Write one new instruction.\n\n<instruction>"
    pairs = [
        {
            "prompt": prompt,
            "chosen": f"{seed_rows[i]['instruction']}</instruction>",
            "rejected": f"{seed_rows[i + 1]['instruction']}</instruction>",
        }
        for i in range(0, 12, 2)
    ]
    return Inputs(
        store, store.put_jsonl("inputs/candidates.jsonl", candidates), store.put_jsonl("inputs/pairs.jsonl", pairs)
    )


def ref(r: ArtifactRef) -> common_pb2.ArtifactRef:
    return common_pb2.ArtifactRef(uri=r.uri, sha256=r.sha256)


def sft_request(inputs, student, prefix: str, *, seed: int = 0, **settings) -> trainer_pb2.TrainStudentRequest:
    """The warm-up (its AdamW state is saved with the model, so the optimizer is compared too): 8 rows, batch 2,
    accumulation 2, 3 epochs = 6 steps under a linear warm-up over all of them (every step has its own rate)."""
    sft = {"learning_rate": 1e-3, "batch_size": 2, "gradient_accumulation_steps": 2, "epochs": 3.0, **settings}
    return trainer_pb2.TrainStudentRequest(
        request_id=f"{prefix}:train-student",
        student=common_pb2.ModelSpec(path=str(student)),
        candidates=ref(inputs.candidates),
        output_prefix=prefix,
        sft=trainer_pb2.SFTSettings(**sft),
        seed=seed,
        warmup=True,
    )


def dpo_request(inputs, teacher, prefix: str, **settings) -> trainer_pb2.TrainTeacherRequest:
    """A LoRA adapter: 6 pairs, batch 2, 2 epochs = 6 steps under warm-up-stable-decay."""
    dpo = {"learning_rate": 5e-3, "batch_size": 2, "epochs": 2.0, "warmup_ratio": 0.3, "decay_ratio": 0.4, **settings}
    return trainer_pb2.TrainTeacherRequest(
        request_id=f"{prefix}:train-teacher",
        teacher=common_pb2.ModelSpec(path=str(teacher)),
        pairs=ref(inputs.pairs),
        output_prefix=prefix,
        dpo=trainer_pb2.DPOSettings(**dpo),
        seed=0,
    )


class Recorder:
    """A progress sink that records every report and cancels the job (a preemption) at step ``at``."""

    def __init__(self, at: int | None = None):
        self.at, self.reports = at, []

    def __call__(self, stage: str, done: int, total: int, metrics: dict | None = None) -> None:
        self.reports.append(done)
        if self.at is not None and done >= self.at:
            raise Cancelled("cancelled")


def run(inputs, message, progress):
    stage = stages.train_student if isinstance(message, trainer_pb2.TrainStudentRequest) else stages.train_teacher
    return stage(inputs.store, message)(progress)


def published(store: LocalArtifactStore, prefix: str) -> dict[str, bytes]:
    """Every file of the output folder but the manifest (its timings differ), by name."""
    return {
        key.removeprefix(f"{prefix}/"): store.get_bytes(key)
        for key in store.list(prefix)
        if key != f"{prefix}/manifest.json"
    }


@pytest.mark.parametrize("kind", ["sft", "dpo"])
def test_an_interrupted_training_resumes_and_publishes_the_same_folder(
    inputs, tiny_student, tiny_teacher, kind, caplog
):
    store = inputs.store
    make = (
        (lambda p, **s: sft_request(inputs, tiny_student, p, **s))
        if kind == "sft"
        else (lambda p, **s: dpo_request(inputs, tiny_teacher, p, **s))
    )
    every = EVERY[kind]
    plain = run(inputs, make(f"{kind}-plain", checkpoint_every=0), Recorder())
    full = run(inputs, make(f"{kind}-full", checkpoint_every=every), Recorder())
    assert full.metrics["steps"] == STEPS and not store.list(f"{kind}-full{SUFFIX}")

    message = make(f"{kind}-resumed", checkpoint_every=every)
    with pytest.raises(Cancelled):
        run(inputs, message, Recorder(at=STEPS - 1))
    state = store.get_json(f"{kind}-resumed{SUFFIX}/{STATE}")
    assert state["meta"]["step"] == every * ((STEPS - 2) // every)  # the last before the preemption
    assert {key.split("/")[1] for key in store.list(f"{kind}-resumed{SUFFIX}")} == {f"v{state['version']}", STATE}
    assert not store.exists(f"{kind}-resumed/manifest.json")

    logger = logging.getLogger("montessori.common.checkpoints")
    logger.addHandler(caplog.handler)
    again = Recorder()
    try:
        with caplog.at_level(logging.INFO, logger=logger.name):
            resumed = run(inputs, message, again)  # the same request, sent again
    finally:
        logger.removeHandler(caplog.handler)
    step = state["meta"]["step"]
    assert again.reports[:2] == [step, step + 1]  # progress starts from the checkpointed step
    assert any(r.getMessage() == "resumed from checkpoint" for r in caplog.records)
    folders = [published(store, f"{kind}-{name}") for name in ("plain", "full", "resumed")]
    assert len(folders[0]) >= 3 and folders[0] == folders[1] == folders[2]  # byte for byte, optimizer state included
    assert not store.list(f"{kind}-resumed{SUFFIX}")  # deleted once published
    assert plain.metrics == full.metrics == resumed.metrics  # the training loss is the whole run's after a resume


def test_the_logged_mean_loss_is_the_trainers_training_loss(tiny_student, seed_rows, tmp_path, monkeypatch):
    """mean_train_loss(state) reproduces the Trainer's training_loss for an uninterrupted run, to the bit."""
    from common.chat import instruction_text
    from common.models import ModelRef
    from services.trainer import sft
    from services.trainer.config import SFTSettings

    seen = {}
    original = sft.mean_train_loss
    monkeypatch.setattr(sft, "mean_train_loss", lambda state: seen.setdefault("mean", original(state)))
    examples = [(instruction_text(r["instruction"], r["input"]), r["output"]) for r in seed_rows[:8]]
    settings = SFTSettings(learning_rate=1e-3, batch_size=2, gradient_accumulation_steps=2, lr_scheduler="constant")
    trainer_losses = []
    from transformers import Trainer

    train = Trainer.train
    monkeypatch.setattr(
        Trainer, "train", lambda self, **k: trainer_losses.append(train(self, **k)) or trainer_losses[-1]
    )
    sft.train_sft(ModelRef(str(tiny_student)), examples, settings, tmp_path / "out", seed=0)
    assert seen["mean"] == trainer_losses[0].training_loss


def test_a_checkpoint_of_another_request_is_not_resumed(inputs, tiny_student, caplog):
    store = inputs.store
    with pytest.raises(Cancelled):
        run(
            inputs,
            sft_request(inputs, tiny_student, "other", seed=1, checkpoint_every=EVERY["sft"]),
            Recorder(at=STEPS - 1),
        )
    logger = logging.getLogger("montessori.common.checkpoints")
    logger.addHandler(caplog.handler)
    progress = Recorder()
    try:
        with caplog.at_level(logging.WARNING, logger=logger.name):
            run(inputs, sft_request(inputs, tiny_student, "other", seed=0, checkpoint_every=EVERY["sft"]), progress)
    finally:
        logger.removeHandler(caplog.handler)
    assert progress.reports == list(range(1, STEPS + 1))  # trained from step 0
    assert any("written for other work" in r.getMessage() for r in caplog.records)
    assert not store.list(f"other{SUFFIX}")


def test_a_checkpoint_that_does_not_verify_is_discarded(inputs, tiny_student):
    store = inputs.store
    message = sft_request(inputs, tiny_student, "damaged", checkpoint_every=EVERY["sft"])
    with pytest.raises(Cancelled):
        run(inputs, message, Recorder(at=STEPS - 1))
    state = store.get_json(f"damaged{SUFFIX}/{STATE}")
    folder = store.local_path(f"damaged{SUFFIX}/v{state['version']}/{TRAINER_PART}")
    (folder / "trainer_state.json").write_text("{}")  # the store's digest check now fails
    progress = Recorder()
    result = run(inputs, message, progress)
    assert progress.reports == list(range(1, STEPS + 1)) and result.metrics["steps"] == STEPS
    assert not store.list(f"damaged{SUFFIX}")


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="needs a machine without CUDA")
def test_the_trainer_services_device_reaches_the_training_run(inputs, tiny_student):
    """``montessori serve trainer --device`` is passed down to the Trainer's arguments: a CUDA device this machine
    lacks fails the stage naming ``device`` (it used to be checked at start-up only, and training ran on auto)."""
    from common.errors import FailedPrecondition
    from common.progress import no_progress

    work = stages.train_student(inputs.store, sft_request(inputs, tiny_student, "device/student"), device="cuda")
    with pytest.raises(FailedPrecondition) as refused:
        work(no_progress)
    assert refused.value.field == "device"
