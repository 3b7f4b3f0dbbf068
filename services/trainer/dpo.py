"""Teacher DPO with TRL (METHOD.md stage 6): a LoRA adapter on the current teacher by default.

With ``heldout_fraction`` some prompt groups are kept out of training and scored after it, so the
round reports whether the teacher's implied reward ranks pairs it never saw (a diagnostic, not in
the paper: the training-batch reward accuracy alone cannot tell learning from memorising).
"""

from __future__ import annotations

import hashlib
import tempfile
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from transformers import PrinterCallback

from common.checkpoints import StageCheckpoint
from common.errors import FailedPrecondition
from common.models import ModelRef, load_model, load_tokenizer
from common.progress import Progress, no_progress
from common.stage_results import TrainTeacherMetrics
from services.trainer.callbacks import CheckpointCallback, ProgressCallback, mean_train_loss, restore_checkpoint
from services.trainer.common_args import (
    base_args,
    gathered_state_dict,
    keep_reports,
    require_reporting,
    schedule_kwargs,
)
from services.trainer.config import DPOSettings
from services.trainer.pair_selection import select_pairs


@dataclass(frozen=True, kw_only=True)
class DPOResult(TrainTeacherMetrics):
    """What a DPO run produced: the adapter (or full model) folder, and the stage's typed metrics, which the
    controller reads back as :class:`~common.stage_results.TrainTeacherMetrics`."""

    output_dir: Path

    def metrics(self) -> dict:
        """The stage's published metrics (a held-out figure is absent, not a made-up 0, when nothing was held out)."""
        return {name: value for name, value in self.to_metrics().items() if name != "output_dir"}


def pair_group(pair: dict) -> str:
    """The prompt group of a pair: its ``group_id`` (the preference stage's), else its prompt."""
    return str(pair["group_id"]) if "group_id" in pair else f"prompt:{pair['prompt']}"


def heldout_split(pairs: list[dict], fraction: float, *, seed: int) -> tuple[list[dict], list[dict]]:
    """(train, held_out): whole prompt groups, in a seeded order, until ``fraction`` of the pairs is held out.

    A group's rank is a hash of (seed, group), so it does not depend on which other groups the round
    has. Nothing is held out when ``fraction`` is 0 or when holding out would leave nothing to train on.
    Both lists keep the input order.
    """
    if fraction <= 0.0 or not pairs:
        return list(pairs), []
    rank = lambda group: hashlib.sha256(f"{seed}\0{group}".encode()).hexdigest()  # noqa: E731
    sizes = Counter(pair_group(pair) for pair in pairs)
    target, held, chosen = fraction * len(pairs), 0, set()
    for group in sorted(sizes, key=rank):
        if held >= target:
            break
        chosen.add(group)
        held += sizes[group]
    if held >= len(pairs):
        return list(pairs), []
    return [p for p in pairs if pair_group(p) not in chosen], [p for p in pairs if pair_group(p) in chosen]


def training_pairs(pairs: list[dict], settings: DPOSettings) -> list[dict]:
    """The pairs a run trains on: all of them, or ``max_pairs`` balanced across prompt groups by influence margin."""
    return select_pairs(pairs, settings.max_pairs)


def _rows(pairs: list[dict]) -> list[dict]:
    return [{"prompt": p["prompt"], "chosen": p["chosen"], "rejected": p["rejected"]} for p in pairs]


def train_dpo(
    teacher: ModelRef,
    pairs: list[dict],
    settings: DPOSettings,
    output_dir: Path,
    *,
    seed: int,
    progress: Progress = no_progress,
    stage: str = "dpo",
    checkpoint: StageCheckpoint | None = None,
    processes: int = 1,
    device: str = "auto",
) -> DPOResult:
    """Train the teacher on ``pairs`` (``prompt``/``chosen``/``rejected``); the reference model is the
    frozen current teacher (the LoRA-disabled base, or a separate copy for full fine-tuning). With ``checkpoint``
    (and ``settings.checkpoint_every``), the run resumes from the checkpoint of this work if there is one and saves
    one every ``checkpoint_every`` optimizer steps.

    The held-out split comes before ``max_pairs``, so held-out groups are never trained on, capped or not.
    ``processes``: the ranks of a multi-process run (``services/trainer/rank.py``), each with its own
    ``batch_size`` batches.
    """
    from datasets import Dataset
    from peft import LoraConfig
    from trl import DPOConfig, DPOTrainer

    if not pairs:
        raise FailedPrecondition("no preference pairs to train on", field="pairs")
    require_reporting(settings.report_to)
    pairs, heldout = heldout_split(pairs, settings.heldout_fraction, seed=seed)
    pairs = training_pairs(pairs, settings)
    tokenizer = load_tokenizer(teacher.path, field="teacher.path")
    model = load_model(teacher, field="teacher.path", trainable=not settings.lora)
    ref_model = None if settings.lora else load_model(teacher, field="teacher.path")
    peft_config = (
        LoraConfig(
            r=settings.lora_rank,
            lora_alpha=settings.lora_alpha,
            lora_dropout=settings.lora_dropout,
            target_modules="all-linear",
            task_type="CAUSAL_LM",
        )
        if settings.lora
        else None
    )
    every = settings.checkpoint_every if checkpoint is not None else 0  # 0: the Trainer saves nothing
    with tempfile.TemporaryDirectory(prefix="montessori-dpo-") as scratch:
        args = DPOConfig(
            **base_args(
                output_dir=scratch,
                seed=seed,
                report_to=settings.report_to,
                checkpoint_every=every,
                device=device,
                precision=settings.precision,
            ),
            **schedule_kwargs(settings, examples=len(pairs), processes=processes),
            beta=settings.beta,
            loss_type=[settings.loss_type],
            label_smoothing=settings.label_smoothing,
            learning_rate=settings.learning_rate,
            num_train_epochs=settings.epochs,
            per_device_train_batch_size=settings.batch_size,
            per_device_eval_batch_size=settings.batch_size,
            gradient_accumulation_steps=settings.gradient_accumulation_steps,
            max_length=settings.max_length,
        )
        callbacks = [ProgressCallback(progress, stage)]
        if every:
            callbacks.append(CheckpointCallback(checkpoint))
        # eval_dataset is tokenised with the training set; it is evaluated once, after training (eval_strategy "no").
        trainer = DPOTrainer(
            model=model,
            ref_model=ref_model,
            args=args,
            train_dataset=Dataset.from_list(_rows(pairs)),
            eval_dataset=Dataset.from_list(_rows(heldout)) if heldout else None,
            processing_class=tokenizer,
            peft_config=peft_config,
            callbacks=callbacks,
        )
        trainer.remove_callback(PrinterCallback)  # metrics go to the manifest and progress bars, not stdout
        output = trainer.train(resume_from_checkpoint=restore_checkpoint(checkpoint) if every else None)
        # TRL logs batch means of rewards/accuracies and rewards/margins: exact when one batch holds all held-out pairs.
        evaluation = trainer.evaluate() if heldout else {}
        state_dict = gathered_state_dict(trainer)  # every rank takes part; None but under FSDP
        if trainer.args.should_save:  # rank 0 of a multi-process run (see services/trainer/launch.py), or the one
            output_dir.mkdir(parents=True, exist_ok=True)
            trainer.accelerator.unwrap_model(trainer.model).save_pretrained(output_dir, state_dict=state_dict)
            if settings.lora:
                _sort_target_modules(output_dir / "adapter_config.json")
            if not settings.lora:
                tokenizer.save_pretrained(output_dir)
            keep_reports(scratch, output_dir)
    history = [h for h in trainer.state.log_history if "rewards/margins" in h]
    margin = lambda h: float(h["rewards/margins"])  # noqa: E731
    return DPOResult(
        output_dir=output_dir,
        adapter=settings.lora,
        steps=int(output.global_step),
        train_loss=mean_train_loss(trainer.state),
        reward_margin_first=margin(history[0]) if history else 0.0,
        reward_margin_last=margin(history[-1]) if history else 0.0,
        reward_accuracy_last=float(history[-1].get("rewards/accuracies", 0.0)) if history else 0.0,
        pairs=len(pairs),
        heldout_pairs=len(heldout),
        heldout_reward_accuracy=float(evaluation["eval_rewards/accuracies"]) if heldout else None,
        heldout_reward_margin=float(evaluation["eval_rewards/margins"]) if heldout else None,
    )


def _sort_target_modules(config_path: Path) -> None:
    """peft writes ``target_modules`` in set order, which differs between processes: sorted, identical weights
    give an identical adapter folder (and digest) whichever trainer process wrote them."""
    import json

    config = json.loads(config_path.read_text())
    if isinstance(config.get("target_modules"), list):
        config["target_modules"] = sorted(config["target_modules"])
        config_path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
