"""``influence.compute_dtype``: which passes run under bf16 autocast, and that an estimate's exact audit does not.

Asserted on what each forward pass *ran under* (recorded from inside the model), not on score values: whether
bf16 moves a score is the machine's rounding, whether the pass was autocast is the code's."""

from __future__ import annotations

import torch

from common.artifacts import LocalArtifactStore
from services.influence.config import InfluenceConfig
from services.influence.tasks import score
from tests.unit.influence.test_scoring import make_scorer, warmup_dir, write_round  # noqa: F401 (fixture)


def record_autocast(monkeypatch) -> list[bool]:
    """Every forward pass of any causal LM appends whether CPU bf16 autocast was on while it ran."""
    from transformers import LlamaForCausalLM

    seen: list[bool] = []
    forward = LlamaForCausalLM.forward

    def recording(self, *args, **kwargs):
        seen.append(torch.is_autocast_enabled("cpu") and torch.get_autocast_dtype("cpu") == torch.bfloat16)
        return forward(self, *args, **kwargs)

    monkeypatch.setattr(LlamaForCausalLM, "forward", recording)
    return seen


def test_bf16_runs_every_pass_under_autocast_and_fp32_none(warmup_dir, reference_rows, seed_rows, monkeypatch):  # noqa: F811
    from services.influence.scoring import examples_from_rows

    reference = examples_from_rows(reference_rows[:4], prefix="ref")
    candidates = examples_from_rows(seed_rows[:3], prefix="cand")
    seen = record_autocast(monkeypatch)
    for mode in ("exact", "first_order"):
        seen.clear()
        make_scorer(warmup_dir, reference, compute_dtype="bfloat16", mode=mode).score(candidates)
        assert seen and all(seen), mode  # L0, the shared step, the reference gradient and every candidate
        seen.clear()
        make_scorer(warmup_dir, reference, compute_dtype="float32", mode=mode).score(candidates)
        assert seen and not any(seen), mode


def test_an_estimates_exact_audit_runs_in_fp32_under_a_bf16_round(
    warmup_dir,  # noqa: F811
    seed_rows,
    reference_rows,
    tmp_path,
    monkeypatch,
):
    """The audit measures the whole shortcut (the estimate and its precision), so its exact scores are fp32 ones:
    equal to an fp32 exact round's, and computed with autocast off."""
    candidates, reference = write_round(tmp_path, seed_rows, reference_rows)
    store = LocalArtifactStore(tmp_path / "store")
    common = dict(warmup_dir=warmup_dir, reference_path=reference, candidates_path=candidates)
    score(store, "exact", config=InfluenceConfig(optimizer="sgd", sgd_learning_rate=0.05), **common)
    seen = record_autocast(monkeypatch)
    config = InfluenceConfig(
        optimizer="sgd",
        sgd_learning_rate=0.05,
        mode="first_order",
        compute_dtype="bfloat16",
        audit_size=12,
        min_agreement=1.0,  # any audit below a perfect Spearman falls back: then every row is an fp32 exact one
    )
    result = score(store, "fo-bf16", config=config, **common)
    assert True in seen and False in seen  # the estimate under autocast, the audit without
    if result.metrics["fell_back_to_exact"]:
        assert store.get_jsonl("fo-bf16/scores.jsonl") == store.get_jsonl("exact/scores.jsonl")
    assert result.metrics["audit_size"] == 12
