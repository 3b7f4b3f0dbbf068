"""Held-out DPO pairs (reward accuracy/margin on pairs the teacher did not train on) and TRL's report_to."""

from __future__ import annotations

import json
import math

import pytest

from common.artifacts import LocalArtifactStore
from common.config import from_dict
from common.errors import FailedPrecondition, InvalidArgument
from common.jobs import _numeric
from common.models import ModelRef
from services.trainer.common_args import base_args, keep_reports, require_reporting
from services.trainer.config import DPOSettings, SFTSettings, WarmupSettings
from services.trainer.dpo import heldout_split, pair_group
from services.trainer.tasks import train_teacher


def grouped_pairs(groups: int, per_group: int) -> list[dict]:
    return [
        {
            "prompt": f"Write instruction {g}.\n\n<instruction>",
            "chosen": f"Explain topic {g}-{i}.</instruction>",
            "rejected": f"x{g}{i}</instruction>",
            "group_id": f"g{g}",
        }
        for g in range(groups)
        for i in range(per_group)
    ]


def test_the_split_holds_out_whole_groups_deterministically():
    pairs = grouped_pairs(10, 3)
    train, held = heldout_split(pairs, 0.3, seed=7)
    assert len(held) == 9 and len(train) == 21  # 3 of 10 groups
    assert {pair_group(p) for p in train}.isdisjoint({pair_group(p) for p in held})
    assert heldout_split(pairs, 0.3, seed=7) == (train, held)  # same seed, same split
    assert [p for p in pairs if p in train] == train  # input order kept
    splits = {tuple(sorted({pair_group(p) for p in heldout_split(pairs, 0.3, seed=s)[1]})) for s in range(6)}
    assert len(splits) > 1  # the seed picks the groups
    # A group's side does not depend on the other groups of the round (rank = hash of seed and group).
    reversed_held = heldout_split(list(reversed(pairs)), 0.3, seed=7)[1]
    assert {pair_group(p) for p in reversed_held} == {pair_group(p) for p in held}
    assert heldout_split(pairs, 0.0, seed=7) == (pairs, [])


def test_the_split_never_leaves_nothing_to_train_on_and_groups_by_prompt_without_group_id():
    one_group = grouped_pairs(1, 4)
    assert heldout_split(one_group, 0.5, seed=0) == (one_group, [])  # holding out the group would leave nothing
    train, held = heldout_split(grouped_pairs(4, 2), 0.01, seed=0)
    assert len(held) == 2 and len(train) == 6  # > 0: at least one group
    no_ids = [{k: v for k, v in p.items() if k != "group_id"} for p in grouped_pairs(4, 2)]
    train, held = heldout_split(no_ids, 0.5, seed=3)
    assert len(held) == 4 and {p["prompt"] for p in train}.isdisjoint({p["prompt"] for p in held})


@pytest.mark.parametrize("value", [-0.1, 1.0, 1.5])
def test_heldout_fraction_is_validated(value):
    with pytest.raises(InvalidArgument) as err:
        DPOSettings(heldout_fraction=value)
    assert err.value.field == "heldout_fraction"
    with pytest.raises(InvalidArgument) as err:
        from_dict(DPOSettings, {"heldout_fraction": value}, path="dpo")
    assert err.value.field == "dpo.heldout_fraction"


def test_dpo_reports_reward_accuracy_and_margin_on_the_held_out_pairs(tiny_teacher, tmp_path):
    """Real TRL run through the trainer task: the metrics reach the manifest and, as numbers, the job."""
    store = LocalArtifactStore(tmp_path / "store")
    pairs = grouped_pairs(4, 2)
    pairs_path = tmp_path / "pairs.jsonl"
    pairs_path.write_text("".join(json.dumps(p) + "\n" for p in pairs))
    settings = DPOSettings(
        learning_rate=5e-3, lr_scheduler="constant", batch_size=4, heldout_fraction=0.25, max_length=64
    )
    result = train_teacher(
        store, "t/dpo", teacher=ModelRef(str(tiny_teacher)), pairs_path=pairs_path, settings=settings, seed=0
    )
    metrics = store.get_json("t/dpo/manifest.json")["metrics"]
    assert metrics == result.metrics
    assert metrics["pairs"] == 6 and metrics["heldout_pairs"] == 2
    assert 0.0 <= metrics["heldout_reward_accuracy"] <= 1.0
    assert math.isfinite(metrics["heldout_reward_margin"])
    assert {"reward_margin_first", "reward_margin_last", "reward_accuracy_last"} <= set(metrics)
    job = _numeric(metrics)  # job metrics are map<string, double>
    assert job["heldout_pairs"] == 2.0 and isinstance(job["heldout_reward_accuracy"], float)


# ---------------------------------------------------------------- loss_type


def test_the_dpo_objective_is_a_setting_of_the_stage_request(tiny_teacher, tmp_path):
    """From the typed request to TRL: IPO's squared loss starts near (1 / (2 beta))^2 = 25 where DPO's sigmoid loss
    starts near ln 2 (the policy equals its reference at the first step), so the loss says which one trained."""
    from montessori.v1 import common_pb2, trainer_pb2
    from services.trainer import stages

    store = LocalArtifactStore(tmp_path / "store")
    pairs = store.put_jsonl("in/pairs.jsonl", grouped_pairs(2, 2))
    losses = {}
    for loss_type in ("sigmoid", "ipo"):
        request = trainer_pb2.TrainTeacherRequest(
            teacher=common_pb2.ModelSpec(path=str(tiny_teacher)),
            pairs=common_pb2.ArtifactRef(uri=pairs.uri),
            output_prefix=f"t/{loss_type}",
            seed=0,
            dpo=trainer_pb2.DPOSettings(
                loss_type=loss_type, learning_rate=1e-6, lr_scheduler="constant", batch_size=4, max_length=64
            ),
        )
        stages.train_teacher(store, request)(lambda *args: None)
        manifest = store.get_json(f"t/{loss_type}/manifest.json")
        assert manifest["config"]["dpo"]["loss_type"] == loss_type
        losses[loss_type] = manifest["metrics"]["train_loss"]
    assert losses["sigmoid"] < 1.0 < 10.0 < losses["ipo"], losses
    with pytest.raises(InvalidArgument) as err:
        stages.train_teacher(
            store,
            trainer_pb2.TrainTeacherRequest(
                teacher=common_pb2.ModelSpec(path=str(tiny_teacher)),
                dpo=trainer_pb2.DPOSettings(loss_type="kto"),
                validate_only=True,
            ),
        )
    assert err.value.field == "dpo.loss_type"


# ---------------------------------------------------------------- report_to


def test_report_to_reaches_the_trl_args_of_every_trainer():
    from trl import DPOConfig, SFTConfig

    for config in (SFTConfig, DPOConfig):
        assert config(**base_args(output_dir="/tmp/x", seed=0, report_to="tensorboard")).report_to == ["tensorboard"]
        assert config(**base_args(output_dir="/tmp/x", seed=0)).report_to == []  # default "none"
    for settings in (SFTSettings(), WarmupSettings(), DPOSettings()):
        assert settings.report_to == "none"
    assert DPOSettings(report_to="wandb").report_to == "wandb"


@pytest.mark.parametrize("cls", [SFTSettings, WarmupSettings, DPOSettings])
def test_report_to_is_validated(cls):
    with pytest.raises(InvalidArgument) as err:
        cls(report_to="comet")
    assert err.value.field == "report_to"
    with pytest.raises(InvalidArgument) as err:
        from_dict(cls, {"report_to": "comet"}, path="sft")
    assert err.value.field == "sft.report_to"


def test_a_missing_integration_fails_before_training():
    from transformers.integrations import get_available_reporting_integrations

    require_reporting("none")
    require_reporting("all")
    if "mlflow" in get_available_reporting_integrations():
        pytest.skip("mlflow is installed here")
    with pytest.raises(FailedPrecondition) as err:
        require_reporting("mlflow")
    assert err.value.field == "report_to"


def test_tensorboard_event_files_move_into_the_published_folder(tmp_path):
    scratch, out = tmp_path / "scratch", tmp_path / "out"
    (scratch / "runs" / "May01_host").mkdir(parents=True)
    (scratch / "runs" / "May01_host" / "events.out.tfevents.1").write_bytes(b"x")
    out.mkdir()
    keep_reports(scratch, out)
    assert (out / "runs" / "May01_host" / "events.out.tfevents.1").is_file()
    keep_reports(tmp_path / "empty", out)  # nothing reported: nothing to move
