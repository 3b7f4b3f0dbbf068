"""Shared fixtures: the tiny offline models (real Llama-architecture torch models) and data paths."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

from common.envs import apply_offline_defaults

apply_offline_defaults()

REPO = Path(__file__).resolve().parents[1]
DATA = REPO / "data"


def pytest_configure(config):
    import torch

    torch.set_num_threads(int(os.environ.get("MONTESSORI_TORCH_THREADS", "2")))


@pytest.fixture(scope="session")
def tiny_models() -> tuple[Path, Path]:
    """(teacher, student) folders: the ones ``make setup`` built, or built now into the repo's models/."""
    from common.offline_models import build_tiny_models

    return build_tiny_models(REPO / "models", DATA)


@pytest.fixture(scope="session")
def tiny_teacher(tiny_models) -> Path:
    return tiny_models[0]


@pytest.fixture(scope="session")
def tiny_student(tiny_models) -> Path:
    return tiny_models[1]


@pytest.fixture(scope="session")
def seed_rows():
    from common.jsonl import read_instruction_rows

    return read_instruction_rows(DATA / "seed.jsonl")


@pytest.fixture(scope="session")
def reference_rows():
    from common.jsonl import read_instruction_rows

    return read_instruction_rows(DATA / "reference.jsonl")
