"""Fixtures of the vLLM teacher tests: the default SmolLM2 teacher (head_dim 64, which the CPU
attention kernels need; the tiny test models have 16) and LoRA adapters made for it."""

from __future__ import annotations

import pytest

from services.teacher.adapters import random_adapter
from tests.conftest import REPO

BASE = REPO / "models" / "smollm2-135m-instruct"


@pytest.fixture(scope="session")
def base_model() -> str:
    assert (BASE / "config.json").is_file(), f"{BASE} is missing: run `make setup`"
    return str(BASE)


@pytest.fixture(scope="session")
def adapters(base_model, tmp_path_factory) -> list[str]:
    root = tmp_path_factory.mktemp("adapters")
    return [random_adapter(base_model, root / f"a{i}", seed=i, scale=0.05) for i in range(1, 4)]
