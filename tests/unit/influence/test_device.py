"""Influence scoring's ``device`` setting: checked where the config is built, resolved where the student is
placed, and on a GPU the same scores as on the CPU with the student, its AdamW state and the reference set moved."""

from __future__ import annotations

import copy

import pytest
import torch

from common.chat import encode_example
from common.errors import FailedPrecondition, InvalidArgument
from common.models import load_model, load_tokenizer
from services.influence.config import InfluenceConfig
from services.influence.scoring import InfluenceScorer, collate, examples_from_rows

#: fp32 machine epsilon: tolerances on losses are multiples of it times the loss.
EPS32 = float(torch.finfo(torch.float32).eps)


@pytest.fixture()
def student(tiny_student):
    return load_model(tiny_student, field="student", trainable=True), load_tokenizer(tiny_student, field="student")


def warmed_adamw(model, tokenizer, rows, lr: float) -> torch.optim.AdamW:
    """An AdamW with state after one real step, built on the CPU as ``load_adamw`` builds it for tasks.py."""
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01, foreach=False, fused=False)
    encoded = [encode_example(tokenizer, r.user_text, r.response, max_length=256, where=r.id) for r in rows]
    model(**collate(encoded, tokenizer.pad_token_id)).loss.backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return optimizer


@pytest.mark.parametrize("setting", ["gpu", "cuda:", "cuda:x", "CPU", "", "cuda:0 "])
def test_a_misspelt_device_is_an_invalid_argument_naming_the_field(setting):
    with pytest.raises(InvalidArgument) as caught:
        InfluenceConfig(device=setting)
    assert caught.value.field == "device"


@pytest.mark.parametrize("setting", ["auto", "cpu", "cuda", "cuda:0", "cuda:3"])
def test_a_device_setting_is_accepted_without_the_device(setting):
    """A controller without a GPU validates a worker's config: only the spelling is checked there."""
    assert InfluenceConfig(device=setting).device == setting


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_scoring_on_cuda_without_one_is_a_failed_precondition_naming_the_field(student, reference_rows):
    model, tokenizer = student
    with pytest.raises(FailedPrecondition) as caught:
        InfluenceScorer(
            model,
            tokenizer,
            examples_from_rows(reference_rows[:4], prefix="ref"),
            InfluenceConfig(optimizer="sgd", device="cuda"),
        )
    assert caught.value.field == "device"


def test_cpu_scoring_keeps_everything_on_the_cpu(student, reference_rows, seed_rows):
    """device 'cpu' places nothing elsewhere, and gives the same scores bit for bit as a second scorer on a copy
    (with the default 'auto' where this machine has no CUDA: auto is the CPU then)."""
    model, tokenizer = student
    reference = examples_from_rows(reference_rows[:4], prefix="ref")
    candidates = examples_from_rows(seed_rows[:3], prefix="cand")
    twin = copy.deepcopy(model)
    optimizer = warmed_adamw(model, tokenizer, candidates[:1], lr=1e-3)
    twin_optimizer = torch.optim.AdamW(twin.parameters(), foreach=False, fused=False)
    twin_optimizer.load_state_dict(copy.deepcopy(optimizer.state_dict()))
    twin.load_state_dict(model.state_dict())
    scorer = InfluenceScorer(model, tokenizer, reference, InfluenceConfig(device="cpu"), optimizer)
    assert scorer.device == torch.device("cpu")
    assert all(p.device.type == "cpu" for p in model.parameters())
    assert all(v.device.type == "cpu" for batch in scorer.reference_loss.batches for v in batch.values())
    twin_config = InfluenceConfig(device="cpu" if torch.cuda.is_available() else "auto")
    twin_scorer = InfluenceScorer(twin, tokenizer, reference, twin_config, twin_optimizer)
    assert [r["influence"] for r in scorer.score(candidates)] == [r["influence"] for r in twin_scorer.score(candidates)]


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_scoring_moves_the_state_in_place_and_agrees_with_the_cpu(student, reference_rows, seed_rows):
    """The student, its AdamW moments and the reference batches move to the GPU (the optimizer keeps the model's
    own Parameter objects; its step count stays on the host; the weights stay fp32), and exact and first-order
    scores agree with the CPU's to a small fraction of their spread."""
    model, tokenizer = student
    reference = examples_from_rows(reference_rows[:8], prefix="ref")
    candidates = examples_from_rows(seed_rows[:6], prefix="cand")
    optimizer = warmed_adamw(model, tokenizer, candidates[:2], lr=1e-3)
    cpu_model = copy.deepcopy(model)
    cpu_optimizer = torch.optim.AdamW(cpu_model.parameters(), foreach=False, fused=False)
    cpu_optimizer.load_state_dict(copy.deepcopy(optimizer.state_dict()))
    cpu_model.load_state_dict(model.state_dict())
    parameters = list(model.parameters())

    gpu = InfluenceScorer(model, tokenizer, reference, InfluenceConfig(device="cuda"), optimizer)
    assert gpu.device.type == "cuda"
    assert [id(p) for p in model.parameters()] == [id(p) for p in parameters]
    assert all(p.device.type == "cuda" and p.dtype == torch.float32 for p in model.parameters())
    held = [p for group in optimizer.param_groups for p in group["params"]]
    assert {id(p) for p in held} == {id(p) for p in parameters}
    for state in optimizer.state.values():
        assert state["exp_avg"].device.type == "cuda" and state["exp_avg_sq"].device.type == "cuda"
        assert state["step"].device.type == "cpu"
    assert all(v.device.type == "cuda" for batch in gpu.reference_loss.batches for v in batch.values())
    cpu = InfluenceScorer(cpu_model, tokenizer, reference, InfluenceConfig(device="cpu"), cpu_optimizer)

    assert gpu.base_loss == pytest.approx(cpu.base_loss, rel=256 * EPS32)
    for mode in ("exact", "first_order"):
        on_gpu = [r["influence"] for r in gpu.score(candidates, mode=mode)]
        on_cpu = [r["influence"] for r in cpu.score(candidates, mode=mode)]
        spread = max(on_cpu) - min(on_cpu)
        assert spread > 0
        tolerance = 0.01 * spread + 256 * EPS32 * cpu.base_loss
        assert max(abs(a - b) for a, b in zip(on_gpu, on_cpu)) <= tolerance, (mode, on_gpu, on_cpu)
    # The scorer restores its snapshot after every candidate: the GPU weights are the warm-up's, bit for bit.
    assert all(torch.equal(p.detach().cpu(), q.detach()) for p, q in zip(model.parameters(), cpu_model.parameters()))
