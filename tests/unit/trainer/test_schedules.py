"""The paper's schedules and batch sizes (official configs/templates/*.yml) and the balanced DPO pair cap."""

from __future__ import annotations

import json

import pytest

from common.chat import instruction_text
from common.errors import InvalidArgument
from common.models import ModelRef
from services.preference.config import PreferenceConfig
from services.preference.pairs import ScoredCandidate, assemble_pairs
from services.trainer.common_args import optimizer_steps, schedule_kwargs
from services.trainer.config import DPOSettings, SFTSettings, WarmupSettings, final_lr_ratio
from services.trainer.dpo import training_pairs
from services.trainer.sft import train_sft


def test_paper_defaults_have_effective_batch_32_and_wsd_with_a_minimum_lr():
    for settings in (SFTSettings(), WarmupSettings()):
        assert settings.batch_size * settings.gradient_accumulation_steps == 32 and settings.learning_rate == 5e-6
    sft = SFTSettings()
    assert (sft.lr_scheduler, sft.warmup_ratio, sft.decay_ratio, sft.min_lr_ratio) == (
        "warmup_stable_decay",
        0.1,
        0.4,
        1e-4,
    )
    dpo = DPOSettings()
    assert (dpo.lr_scheduler, dpo.warmup_ratio, dpo.decay_ratio, dpo.min_lr_ratio) == (
        "warmup_stable_decay",
        0.1,
        0.4,
        1e-3,
    )
    assert dpo.batch_size * dpo.gradient_accumulation_steps == 2
    assert final_lr_ratio(WarmupSettings()) == 1.0  # the warm-up ends at its peak: influence steps use it


def test_schedule_kwargs_carry_the_phases_and_the_minimum_lr():
    # 320 examples, 2 per micro-batch, 16 micro-batches per step: 10 steps; 1 warm-up, 4 decay, 5 stable.
    assert optimizer_steps(SFTSettings(), examples=320) == 10
    assert schedule_kwargs(SFTSettings(), examples=320) == {
        "lr_scheduler_type": "warmup_stable_decay",
        "warmup_steps": 1,
        "lr_scheduler_kwargs": {"num_decay_steps": 4, "min_lr_ratio": 1e-4},
    }
    assert schedule_kwargs(DPOSettings(), examples=100) == {  # 50 steps of 2 pairs
        "lr_scheduler_type": "warmup_stable_decay",
        "warmup_steps": 5,
        "lr_scheduler_kwargs": {"num_decay_steps": 20, "min_lr_ratio": 1e-3},
    }
    # The warm-up warms up linearly over all of its steps and then stays at the peak.
    assert schedule_kwargs(WarmupSettings(), examples=200) == {
        "lr_scheduler_type": "constant_with_warmup",
        "warmup_steps": 7,
    }
    assert schedule_kwargs(SFTSettings(lr_scheduler="constant"), examples=320) == {"lr_scheduler_type": "constant"}


def test_step_count_is_the_trainers():
    # A short last micro-batch and a short last accumulation still make a step (the Trainer's count).
    settings = SFTSettings(batch_size=3, gradient_accumulation_steps=2, epochs=2)
    assert optimizer_steps(settings, examples=13) == 6  # 5 micro-batches -> 3 steps per epoch
    assert optimizer_steps(SFTSettings(), examples=1) == 1


@pytest.mark.parametrize(
    "overrides",
    [
        {"lr_scheduler": "warmup_stable_decay", "min_lr_ratio": 0.5},
        {"lr_scheduler": "cosine"},
        {"lr_scheduler": "linear"},
    ],
)
def test_a_warmup_that_decays_is_rejected(overrides):
    with pytest.raises(InvalidArgument) as err:
        WarmupSettings(**overrides)
    assert err.value.field == "lr_scheduler"
    WarmupSettings(lr_scheduler="warmup_stable_decay", warmup_ratio=0.5, min_lr_ratio=1.0)  # ends at the peak: fine


def test_schedule_ratios_are_validated():
    with pytest.raises(InvalidArgument, match="warmup_ratio"):
        SFTSettings(warmup_ratio=1.5)
    with pytest.raises(InvalidArgument) as err:
        DPOSettings(warmup_ratio=0.7, decay_ratio=0.4)
    assert err.value.field == "decay_ratio"
    with pytest.raises(InvalidArgument, match="min_lr_ratio"):
        DPOSettings(min_lr_ratio=-0.1)


def saved_learning_rates(folder) -> set[float]:
    return {group["lr"] for group in json.loads((folder / "optimizer.json").read_text())["param_groups"]}


def test_the_warmup_ends_at_its_peak_and_the_sft_at_its_minimum(tiny_student, seed_rows, tmp_path):
    """Real Trainer runs: the learning rate a saved AdamW state carries (what influence steps restore)."""
    examples = [(instruction_text(r["instruction"], r["input"]), r["output"]) for r in seed_rows[:10]]
    student = ModelRef(str(tiny_student))
    peak = 1e-3
    # Paper warm-up shape, 5 steps of 2: lr 0, 0.2, ..., 0.8 x peak, and the state ends at the peak.
    warm = train_sft(
        student,
        examples,
        WarmupSettings(learning_rate=peak, batch_size=2, gradient_accumulation_steps=1),
        tmp_path / "warmup",
        seed=0,
        save_optimizer=True,
    )
    assert warm.steps == 5 and saved_learning_rates(tmp_path / "warmup") == {peak}
    # Paper SFT shape, 10 steps of 1: warm-up 1, stable 5, cosine decay 4 to min_lr_ratio x peak.
    sft = train_sft(
        student,
        examples,
        SFTSettings(learning_rate=peak, batch_size=1, gradient_accumulation_steps=1),
        tmp_path / "sft",
        seed=0,
        save_optimizer=True,
    )
    (lr,) = saved_learning_rates(tmp_path / "sft")
    assert sft.steps == 10 and lr == pytest.approx(peak * 1e-4, rel=1e-9)


def test_dpo_max_pairs_takes_a_balanced_selection():
    cands = [
        ScoredCandidate(f"{g}-s{i}", g, f"prompt {g}", f"sample {g}{i}", v)
        for g, values in (("g1", [0.8, 0.3, -0.1, -0.5]), ("g2", [0.2, -0.4]))
        for i, v in enumerate(values)
    ]
    pairs, _ = assemble_pairs(cands, PreferenceConfig())
    assert [p["group_id"] for p in pairs] == ["g1"] * 4 + ["g2"]
    kept = training_pairs(pairs, DPOSettings(max_pairs=2))
    assert [(p["chosen_id"], p["rejected_id"]) for p in kept] == [("g1-s0", "g1-s3"), ("g2-s0", "g2-s1")]
    assert training_pairs(pairs, DPOSettings()) == pairs
