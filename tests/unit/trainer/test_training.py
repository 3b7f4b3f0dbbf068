"""TRL DPO of the teacher and TRL SFT of the student, on the real tiny models."""

from __future__ import annotations

import json

import torch

from common.chat import instruction_text
from common.models import ModelRef, load_model, load_tokenizer
from services.influence.tasks import evaluation_loss
from services.trainer.config import DPOSettings, SFTSettings
from services.trainer.dpo import train_dpo
from services.trainer.sft import train_sft


def sequence_logprob(model, tokenizer, prompt: str, completion: str) -> float:
    """Sum of log p(completion tokens | prompt) under ``model``."""
    prompt_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    completion_ids = tokenizer(completion, add_special_tokens=False)["input_ids"]
    ids = torch.tensor([prompt_ids + completion_ids])
    with torch.no_grad():
        logprobs = torch.log_softmax(model(input_ids=ids).logits[0, :-1], dim=-1)
    targets = ids[0, 1:]
    picked = logprobs[torch.arange(len(targets)), targets]
    return float(picked[len(prompt_ids) - 1 :].sum())


def margin(model_ref: ModelRef, tokenizer, pairs) -> float:
    model = load_model(model_ref, field="teacher")
    return sum(
        sequence_logprob(model, tokenizer, p["prompt"], p["chosen"])
        - sequence_logprob(model, tokenizer, p["prompt"], p["rejected"])
        for p in pairs
    ) / len(pairs)


def test_dpo_raises_the_chosen_over_rejected_margin(tiny_teacher, seed_rows, tmp_path):
    prompt = "Write one new instruction.\n\n<instruction>"
    pairs = [
        {
            "prompt": prompt,
            "chosen": f"{seed_rows[i]['instruction']}</instruction>",
            "rejected": f"{seed_rows[i + 1]['instruction']}</instruction>",
        }
        for i in range(0, 12, 2)
    ]
    teacher = ModelRef(str(tiny_teacher))
    tokenizer = load_tokenizer(tiny_teacher, field="teacher")
    before = margin(teacher, tokenizer, pairs)
    result = train_dpo(
        teacher, pairs, DPOSettings(learning_rate=5e-3, epochs=3, lr_scheduler="constant"), tmp_path / "adapter", seed=0
    )
    assert (tmp_path / "adapter" / "adapter_config.json").is_file()  # a LoRA adapter, not a full model
    assert not list((tmp_path / "adapter").glob("model*.safetensors"))
    after = margin(teacher.with_adapter(str(tmp_path / "adapter")), tokenizer, pairs)
    assert after > before + 0.5
    assert result.steps == 9 and result.reward_margin_last > 0
    assert result.metrics()["heldout_pairs"] == 0 and "heldout_reward_accuracy" not in result.metrics()  # fraction 0


def test_full_finetune_dpo_saves_a_model(tiny_teacher, tmp_path):
    pairs = [{"prompt": "Say: ", "chosen": "yes</instruction>", "rejected": "no</instruction>"}] * 2
    result = train_dpo(
        ModelRef(str(tiny_teacher)), pairs, DPOSettings(lora=False, learning_rate=1e-3), tmp_path / "m", seed=0
    )
    assert not result.adapter and (tmp_path / "m" / "config.json").is_file()


def test_the_robust_loss_takes_its_label_smoothing(tiny_teacher, tmp_path, monkeypatch):
    """The flip probability of Robust DPO reaches TRL's loss (a real DPOTrainer, its constructor recorded)."""
    import trl

    seen = []
    real_init = trl.DPOTrainer.__init__

    def recording_init(self, *args, **kwargs):
        real_init(self, *args, **kwargs)
        seen.append((self.loss_types, self.label_smoothing))

    monkeypatch.setattr(trl.DPOTrainer, "__init__", recording_init)
    pairs = [{"prompt": "Say: ", "chosen": "yes</instruction>", "rejected": "no</instruction>"}] * 2
    settings = DPOSettings(loss_type="robust", label_smoothing=0.2)
    result = train_dpo(ModelRef(str(tiny_teacher)), pairs, settings, tmp_path / "adapter", seed=0)
    assert seen == [(["robust"], 0.2)] and result.steps == 1


def test_sft_lowers_the_students_loss_on_its_training_data(tiny_student, seed_rows, tmp_path):
    rows = seed_rows[:8]
    (tmp_path / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    student = ModelRef(str(tiny_student))
    before = evaluation_loss(student, tmp_path / "train.jsonl")
    examples = [(instruction_text(r["instruction"], r["input"]), r["output"]) for r in rows]
    settings = SFTSettings(
        learning_rate=3e-3, epochs=3, batch_size=4, gradient_accumulation_steps=1, lr_scheduler="constant"
    )
    result = train_sft(student, examples, settings, tmp_path / "out", seed=0)
    after = evaluation_loss(ModelRef(str(tmp_path / "out")), tmp_path / "train.jsonl")
    assert result.steps == 6
    assert after < before - 0.1
