"""Fixtures of the vLLM teacher tests: the default SmolLM2 teacher (head_dim 64, which the CPU
attention kernels need; the tiny test models have 16) and LoRA adapters made for it."""
from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import REPO

BASE = REPO / "models" / "smollm2-135m-instruct"


@pytest.fixture(scope="session")
def base_model() -> str:
    assert (BASE / "config.json").is_file(), f"{BASE} is missing: run `make setup`"
    return str(BASE)


def make_adapter(base: str, target: Path, *, seed: int, scale: float = 0.02) -> str:
    """A LoRA adapter (r=8, all linear layers, as the DPO trainer makes) with random non-zero B,
    so that the version's output visibly differs from the base."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    model = get_peft_model(AutoModelForCausalLM.from_pretrained(base),
                           LoraConfig(r=8, lora_alpha=16, target_modules="all-linear", task_type="CAUSAL_LM"))
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.copy_(torch.randn(param.shape, generator=generator) * scale)
    model.save_pretrained(target)
    return str(target)


@pytest.fixture(scope="session")
def adapters(base_model, tmp_path_factory) -> list[str]:
    root = tmp_path_factory.mktemp("adapters")
    return [make_adapter(base_model, root / f"a{i}", seed=i) for i in range(1, 4)]
