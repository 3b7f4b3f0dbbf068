"""Influence scoring on a real tiny Llama student: definition, exactness, restoration, determinism."""
from __future__ import annotations

import copy
import random

import pytest
import torch

from common.chat import instruction_text
from common.models import ModelRef, load_model, load_tokenizer
from services.influence.config import InfluenceConfig
from services.influence.optimizer_state import load_adamw, save_adamw_state
from services.influence.scoring import Example, InfluenceScorer, ReferenceLoss, collate, examples_from_rows
from services.trainer.config import SFTSettings
from services.trainer.sft import train_sft


@pytest.fixture(scope="module")
def warmup_dir(tiny_student, seed_rows, tmp_path_factory):
    """A warmed-up student with its AdamW state, as the loop makes it."""
    out = tmp_path_factory.mktemp("warmup") / "model"
    examples = [(instruction_text(r["instruction"], r["input"]), r["output"]) for r in seed_rows[:8]]
    train_sft(ModelRef(str(tiny_student)), examples, SFTSettings(learning_rate=1e-3, batch_size=4), out, seed=0,
              save_optimizer=True)
    return out


@pytest.fixture()
def reference(reference_rows):
    return examples_from_rows(reference_rows[:8], prefix="ref")


def make_scorer(warmup_dir, reference, **overrides) -> InfluenceScorer:
    config = InfluenceConfig(**{"optimizer": "sgd", "sgd_learning_rate": 0.05, **overrides})
    tokenizer = load_tokenizer(warmup_dir, field="warmup")
    model = load_model(ModelRef(str(warmup_dir)), field="warmup", trainable=True)
    optimizer = load_adamw(model, warmup_dir) if config.optimizer == "faithful" else None
    return InfluenceScorer(model, tokenizer, reference, config, optimizer)


def random_token_example(tokenizer, seed: int = 0) -> Example:
    rng = random.Random(seed)
    words = lambda n: tokenizer.decode([rng.randrange(5, len(tokenizer) - 2) for _ in range(n)])  # noqa: E731
    return Example("random", words(12), words(40))


@pytest.mark.parametrize("mode,lr", [("sgd", 0.05), ("faithful", None)])
def test_reference_example_helps_more_than_random_tokens(warmup_dir, reference, mode, lr):
    scorer = make_scorer(warmup_dir, reference, optimizer=mode, **({"sgd_learning_rate": lr} if lr else {}))
    own = scorer.score([reference[0]])[0]["influence"]
    noise = scorer.score([random_token_example(scorer.tokenizer)])[0]["influence"]
    # Training on a reference row lowers the reference loss: L0 - L_after > 0.
    assert own > 0
    assert own > noise


def test_scores_do_not_depend_on_order_or_batching(warmup_dir, reference, seed_rows):
    scorer = make_scorer(warmup_dir, reference, optimizer="faithful")
    candidates = examples_from_rows(seed_rows[20:28], prefix="cand")
    forward = {r["id"]: r["influence"] for r in scorer.score(candidates)}
    shuffled = candidates[:]
    random.Random(3).shuffle(shuffled)
    backward = {r["id"]: r["influence"] for r in scorer.score(shuffled)}
    chunked = {r["id"]: r["influence"] for chunk in (candidates[:3], candidates[3:5], candidates[5:])
               for r in scorer.score(chunk)}
    assert forward == backward == chunked  # bit-identical, not merely close
    assert len(set(forward.values())) > 1  # and not trivially constant


def test_student_and_optimizer_state_are_bit_identical_after_scoring(warmup_dir, reference, seed_rows):
    scorer = make_scorer(warmup_dir, reference, optimizer="faithful")
    weights = {n: p.detach().clone() for n, p in scorer.model.named_parameters()}
    moments = {id(p): {k: v.clone() for k, v in scorer.optimizer.state[p].items()} for p in scorer.params}
    scorer.score(examples_from_rows(seed_rows[30:34], prefix="cand"))
    for name, param in scorer.model.named_parameters():
        assert torch.equal(param, weights[name]), name
        assert param.grad is None
    for param in scorer.params:
        for key, value in moments[id(param)].items():
            assert torch.equal(scorer.optimizer.state[param][key], value), key


def test_exact_matches_a_straightforward_implementation(warmup_dir, reference, seed_rows):
    """The in-memory-restore scorer equals the definition done naively: a fresh model copy,
    a fresh optimizer loaded from the warm-up state, one step, the reference loss."""
    scorer = make_scorer(warmup_dir, reference, optimizer="faithful")
    candidates = examples_from_rows(seed_rows[40:43], prefix="cand")
    fast = [r["influence"] for r in scorer.score(candidates)]
    tokenizer = scorer.tokenizer
    reference_loss = ReferenceLoss(tokenizer, reference, batch_size=16, max_length=512)
    for example, expected in zip(candidates, fast):
        model = load_model(ModelRef(str(warmup_dir)), field="warmup", trainable=True)
        optimizer = load_adamw(model, warmup_dir)
        before = reference_loss(model)
        model(**collate([scorer.encode(example)], tokenizer.pad_token_id)).loss.backward()
        optimizer.step()
        assert before - reference_loss(model) == pytest.approx(expected, abs=1e-6)


def test_faithful_step_uses_the_warmup_learning_rate(warmup_dir):
    model = load_model(ModelRef(str(warmup_dir)), field="warmup", trainable=True)
    optimizer = load_adamw(model, warmup_dir)
    assert {g["lr"] for g in optimizer.param_groups} == {1e-3}  # constant schedule: the lr it ended on
    assert all(float(optimizer.state[p]["step"]) == 2 for p in model.parameters())  # 8 examples / batch 4


def test_optimizer_state_roundtrip_is_exact(tiny_student, tmp_path):
    model = load_model(ModelRef(str(tiny_student)), field="student", trainable=True)
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.01)
    model(input_ids=torch.tensor([[5, 6, 7, 8]]), labels=torch.tensor([[5, 6, 7, 8]])).loss.backward()
    optimizer.step()
    save_adamw_state(optimizer, model, tmp_path)
    clone = copy.deepcopy(model)
    restored = load_adamw(clone, tmp_path)
    assert restored.param_groups[0]["lr"] == 0.01
    for (name, a), (_, b) in zip(model.named_parameters(), clone.named_parameters()):
        for key in ("exp_avg", "exp_avg_sq", "step"):
            assert torch.equal(optimizer.state[a][key], restored.state[b][key]), (name, key)


def test_scoring_is_deterministic_across_scorers(warmup_dir, reference, seed_rows):
    candidates = examples_from_rows(seed_rows[50:53], prefix="cand")
    first = make_scorer(warmup_dir, reference, optimizer="faithful").score(candidates)
    second = make_scorer(warmup_dir, reference, optimizer="faithful").score(candidates)
    assert first == second


@pytest.mark.parametrize("mode", ["sgd", "faithful"])
def test_first_order_agrees_with_exact_at_a_small_step(warmup_dir, reference, seed_rows, mode):
    """The first-order estimate lr * <g_ref, update> matches the exact score when the step is small."""
    from services.influence.scoring import pair_agreement, spearman

    scorer = make_scorer(warmup_dir, reference, optimizer=mode, sgd_learning_rate=1e-4)
    if mode == "faithful":
        for group in scorer.optimizer.param_groups:
            group["lr"] = 1e-5  # a small step for the Taylor expansion to hold
    candidates = examples_from_rows(seed_rows[80:100], prefix="cand") + [random_token_example(scorer.tokenizer, s) for s in range(4)]
    candidates = [Example(f"c{i}", c.user_text, c.response) for i, c in enumerate(candidates)]
    exact = [r["influence"] for r in scorer.score(candidates, mode="exact")]
    estimate = [r["influence"] for r in scorer.score(candidates, mode="first_order")]
    assert spearman(exact, estimate) >= 0.95
    # Same scale; the tolerance covers second-order terms and the fp32 resolution of the exact loss difference.
    assert estimate == pytest.approx(exact, rel=0.35, abs=3e-6)
    groups = [f"g{i // 4}" for i in range(len(candidates))]
    assert pair_agreement(groups, exact, estimate) >= 0.8
    assert all(torch.equal(p, s) for p, s in zip(scorer.params, scorer._weights))  # the estimate never moves the student


def test_spearman_and_pair_agreement_helpers():
    from services.influence.scoring import pair_agreement, spearman

    assert spearman([1, 2, 3, 4], [10, 20, 30, 40]) == pytest.approx(1.0)
    assert spearman([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)
    assert pair_agreement(["g", "g", "g"], [1.0, -1.0, 2.0], [1.0, -1.0, 2.0]) == 1.0
    assert pair_agreement(["g", "g"], [1.0, -1.0], [-1.0, 1.0]) == 0.0


def test_first_order_rounds_report_their_audit_and_fall_back_when_it_disagrees(warmup_dir, seed_rows, reference_rows, tmp_path):
    import json as _json

    from common.artifacts import LocalArtifactStore
    from services.influence.tasks import score

    candidates = tmp_path / "candidates.jsonl"
    candidates.write_text("".join(_json.dumps({"id": f"c{i}", "group_id": f"g{i // 4}", "instruction": r["instruction"],
                                               "response": r["output"]}) + "\n" for i, r in enumerate(seed_rows[100:112])))
    reference = tmp_path / "reference.jsonl"
    reference.write_text("".join(_json.dumps(r) + "\n" for r in reference_rows[:8]))
    store = LocalArtifactStore(tmp_path / "store")
    common = dict(warmup_dir=warmup_dir, reference_path=reference, candidates_path=candidates)
    exact = score(store, "exact", config=InfluenceConfig(optimizer="sgd", sgd_learning_rate=1.0), **common)
    audited = score(store, "fo", config=InfluenceConfig(optimizer="sgd", sgd_learning_rate=1.0, mode="first_order",
                                                         audit_size=12, min_agreement=1.0), **common)
    assert audited.metrics["audit_size"] == 12 and -1 <= audited.metrics["audit_spearman"] <= 1
    # With a huge step the Taylor estimate is off, so the round falls back to exact scores.
    assert audited.metrics["audit_spearman"] < 1.0 and audited.metrics["fell_back_to_exact"] == 1
    assert store.get_jsonl("fo/scores.jsonl") == [{**r} for r in store.get_jsonl("exact/scores.jsonl")]
    assert exact.metrics["candidates"] == 12
