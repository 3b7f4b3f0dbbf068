"""Multi-process training through the real launch path: ``accelerate launch`` with configs/accelerate/ddp-cpu.yaml,
2 CPU ranks over gloo. Rank 0's output is published exactly as the one-process path publishes it; checkpoints are
handed over to the service and resumed; a failing rank is a clear error and a cancel stops every rank."""

from __future__ import annotations

import json
import math
from pathlib import Path

import psutil
import pytest
import torch

from common.artifacts import LocalArtifactStore
from common.checkpoints import STATE, SUFFIX
from common.errors import Cancelled, InvalidArgument, MontessoriError
from services.trainer import stages
from services.trainer.launch import Launcher
from tests.unit.trainer.test_checkpoint import STEPS, dpo_request, inputs, sft_request  # noqa: F401 - fixture

REPO = Path(__file__).resolve().parents[3]
DDP_CPU = REPO / "configs" / "accelerate" / "ddp-cpu.yaml"

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def launcher() -> Launcher:
    return Launcher(2, DDP_CPU)


class Recorder:
    """A progress sink that keeps every report and can cancel the job at a step."""

    def __init__(self, cancel_at: int | None = None):
        self.reports: list[tuple[int, int, dict]] = []
        self.cancel_at = cancel_at

    def __call__(self, stage, done, total, metrics=None):
        self.reports.append((done, total, dict(metrics or {})))
        if self.cancel_at is not None and done >= self.cancel_at:
            raise Cancelled("cancelled")


def folder_files(store: LocalArtifactStore, key: str) -> dict[str, bytes]:
    root = store.local_path(key)
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def weights(folder: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(folder / "model.safetensors"))


def mean_loss(model_dir: Path, texts: list[str]) -> float:
    """Mean next-token loss of a model folder on ``texts`` (a property of the weights, not of the trainer's logs)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    losses = []
    with torch.no_grad():
        for text in texts:
            ids = tokenizer(text, return_tensors="pt").input_ids
            losses.append(float(model(ids, labels=ids).loss))
    return sum(losses) / len(losses)


def test_sft_in_two_ranks_publishes_rank_0s_model_like_one_process(
    inputs,  # noqa: F811
    tiny_student,
    launcher,
    monkeypatch,
    tmp_path,
):
    """The warm-up in 2 ranks (8 rows, per-rank batch 2, accumulation 1: the one-process run's global batch of 4)
    publishes a model folder with its AdamW state and the same manifest layout, recording 2 processes; both ranks
    ran in a world of 2; the model fits its data better than the base model, and it lands far closer to the
    one-process model than either is to the base."""
    finished = []
    original = Launcher.run

    def recording(self, *args, **kwargs):
        finished.append(original(self, *args, **kwargs))
        return finished[-1]

    monkeypatch.setattr(Launcher, "run", recording)
    store = inputs.store
    one = stages.train_student(store, sft_request(inputs, tiny_student, "loops/mp/one", checkpoint_every=0))(Recorder())
    progress = Recorder()
    request = sft_request(inputs, tiny_student, "loops/mp/two", gradient_accumulation_steps=1, checkpoint_every=0)
    two = stages.train_student(store, request, launcher=launcher)(progress)

    (result,) = finished
    assert [(r["rank"], r["world_size"], r["backend"]) for r in result["ranks"]] == [(0, 2, "gloo"), (1, 2, "gloo")]
    manifest = store.get_json("loops/mp/two/manifest.json")
    assert (
        manifest["config"]["processes"] == 2
        and "processes" not in store.get_json("loops/mp/one/manifest.json")["config"]
    )
    assert two.metrics["steps"] == one.metrics["steps"] == STEPS
    assert math.isfinite(two.metrics["train_loss"])
    # streamed from rank 0, in order (a heartbeat repeats the last report while the ranks load or save)
    assert list(dict.fromkeys(done for done, _, _ in progress.reports)) == list(range(STEPS + 1))
    files = folder_files(store, "loops/mp/two/model")
    assert set(files) == set(folder_files(store, "loops/mp/one/model"))  # model, tokenizer and AdamW state
    texts = [
        json.loads(line)["response"] for line in store.local_path("inputs/candidates.jsonl").read_text().splitlines()
    ]
    base_loss = mean_loss(tiny_student, texts)
    one_loss = mean_loss(store.local_path("loops/mp/one/model"), texts)
    two_loss = mean_loss(store.local_path("loops/mp/two/model"), texts)
    base = weights(tiny_student)
    w1, w2 = (weights(store.local_path(f"loops/mp/{run}/model")) for run in ("one", "two"))
    moved = math.sqrt(sum(float((w1[k] - base[k]).pow(2).sum()) for k in base))
    apart = math.sqrt(sum(float((w2[k] - w1[k]).pow(2).sum()) for k in base))
    print(f"\nloss: base {base_loss:.4f}, 1 process {one_loss:.4f}, 2 ranks {two_loss:.4f}")
    print(f"|w1 - w0| {moved:.4g}, |w2 - w1| {apart:.4g}")
    # The drop is ~1e5 x fp32 epsilon at this loss: whichever way the ranks round, it is no tie.
    assert base_loss - two_loss > 0.5 * (base_loss - one_loss) > 0.0
    assert apart < 0.5 * moved


@pytest.fixture(scope="module")
def through(inputs, tiny_student, launcher) -> str:  # noqa: F811
    """The key of a 2-rank warm-up with a checkpoint every 3 steps that went through."""
    request = sft_request(inputs, tiny_student, "loops/mpc/a", gradient_accumulation_steps=1, checkpoint_every=3)
    stages.train_student(inputs.store, request, launcher=launcher)(Recorder())
    return "loops/mpc/a/model"


def test_checkpoints_are_handed_over_and_resumed_in_two_ranks(inputs, tiny_student, launcher, through):  # noqa: F811
    """A 2-rank warm-up cancelled at step 5 leaves the checkpoint of step 3 in the store (handed over by rank 0, no
    rank left running); the same request sent again resumes it and publishes the folder, byte for byte, of a run
    that went through."""
    store = inputs.store
    request = sft_request(inputs, tiny_student, "loops/mpc/b", gradient_accumulation_steps=1, checkpoint_every=3)
    with pytest.raises(Cancelled):
        stages.train_student(store, request, launcher=launcher)(Recorder(cancel_at=5))
    state = store.get_json(f"loops/mpc/b{SUFFIX}/{STATE}")
    assert state["meta"]["step"] == 3
    assert not [p for p in psutil.process_iter(["cmdline"]) if "services.trainer.rank" in (p.info["cmdline"] or [])]
    progress = Recorder()
    stages.train_student(store, request, launcher=launcher)(progress)
    assert next(done for done, _, _ in progress.reports if done) == 3  # resumed from the checkpoint
    assert not store.list(f"loops/mpc/b{SUFFIX}")
    assert folder_files(store, "loops/mpc/b/model") == folder_files(store, through)


def test_ranks_that_crash_are_relaunched_from_the_last_checkpoint(
    inputs,  # noqa: F811
    tiny_student,
    launcher,
    through,
    monkeypatch,
    tmp_path,
):
    """Rank 1 aborts (SIGABRT) at the end of step 5, after the checkpoint of step 3 was handed over: the launcher
    starts the ranks again from that checkpoint, once, and publishes the folder, byte for byte, of a run that went
    through. With no restart left, the crash is the job's error, quoting the abort."""
    from services.trainer import launch

    monkeypatch.setattr(launch, "ENTRY", "tests.unit.trainer.abort_once")
    monkeypatch.setenv("MONTESSORI_TEST_ABORT_MARKER", str(tmp_path / "aborted"))
    store = inputs.store
    progress = Recorder()
    request = sft_request(inputs, tiny_student, "loops/mpc/c", gradient_accumulation_steps=1, checkpoint_every=3)
    stages.train_student(store, request, launcher=launcher)(progress)
    assert (tmp_path / "aborted").exists()
    done = [d for d, _, _ in progress.reports]
    assert 3 in done[done.index(4) :]  # progress went back to the checkpoint's step after step 4: a relaunch
    assert folder_files(store, "loops/mpc/c/model") == folder_files(store, through)

    (tmp_path / "aborted").unlink()
    request = sft_request(inputs, tiny_student, "loops/mpc/d", gradient_accumulation_steps=1, checkpoint_every=3)
    with pytest.raises(MontessoriError, match="exit code") as caught:
        stages.train_student(store, request, launcher=Launcher(2, DDP_CPU, restarts=0))(Recorder())
    assert "Traceback" not in str(caught.value) and "Abort" in str(caught.value)


def test_dpo_in_two_ranks_publishes_an_adapter(inputs, tiny_teacher, launcher):  # noqa: F811
    """DPO of a LoRA adapter in 2 ranks publishes a trained adapter (its B matrices left zero) with finite metrics."""
    from safetensors.torch import load_file

    store = inputs.store
    result = stages.train_teacher(store, dpo_request(inputs, tiny_teacher, "loops/mpd/a"), launcher=launcher)(
        Recorder()
    )
    assert result.metrics["adapter"] and result.metrics["pairs"] == 6
    assert all(math.isfinite(float(v)) for v in result.metrics.values())
    adapter = load_file(str(store.local_path("loops/mpd/a/adapter") / "adapter_model.safetensors"))
    assert max(float(t.abs().max()) for k, t in adapter.items() if "lora_B" in k) > 0.0


def test_a_bad_setting_in_the_work_file_is_the_ranks_own_error(tiny_student, launcher, tmp_path):
    """A setting the ranks reject is raised as the same error, naming the field."""
    work = {
        "kind": "sft",
        "model": {"path": str(tiny_student), "adapters": []},
        "candidates": str(tmp_path / "none.jsonl"),
        "limit": None,
        "settings": {"learning_rate": 5.0},
        "seed": 0,
        "save_optimizer": False,
        "output_dir": str(tmp_path / "out"),
    }
    with pytest.raises(InvalidArgument, match="sft.learning_rate"):
        launcher.run(work, tmp_path / "launch", progress=Recorder(), stage="sft")


def test_a_crashed_rank_is_an_error_with_its_exit_code_and_last_lines(tmp_path):
    """A rank that dies of an unexpected exception, in every launch (the first and its restart): the error has the
    exit code and the exception's line, not a traceback."""
    with pytest.raises(MontessoriError) as caught:
        Launcher(2, DDP_CPU, restarts=1).run({"model": {}}, tmp_path / "launch", progress=Recorder(), stage="sft")
    message = str(caught.value)
    assert "exit code 1" in message and "KeyError" in message and "Traceback" not in message
    assert sorted(p.name for p in (tmp_path / "launch").iterdir()) == ["attempt-0", "attempt-1"]
