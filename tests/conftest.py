"""Shared fixtures: the tiny offline models (real Llama-architecture torch models) and data paths."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import pytest

from common.envs import apply_offline_defaults, test_seed

apply_offline_defaults()

REPO = Path(__file__).resolve().parents[1]
#: The suite's draw (``MONTESSORI_TEST_SEED``, default 0): the tiny models are initialised from it.
TEST_SEED = test_seed()
#: The loop seeds of the loop-level tests (the tiny loop in process, through the services, the experiment): every
#: run of the suite runs them under two draws, so that a test hinging on one draw fails on its author's machine.
LOOP_SEEDS = (2 * TEST_SEED, 2 * TEST_SEED + 1)

# tests/vllm run from the vLLM environment (`make test-vllm`, part of `make test`); the main
# environment has no vLLM, so it does not collect them.
collect_ignore = [] if importlib.util.find_spec("vllm") else ["vllm"]
DATA = REPO / "data"


def pytest_configure(config):
    import torch

    torch.set_num_threads(int(os.environ.get("MONTESSORI_TORCH_THREADS", "2")))


@pytest.fixture(scope="session")
def tiny_models() -> tuple[Path, Path]:
    """(teacher, student) folders: the ones ``make setup`` built, or built now into the repo's models/."""
    from setup.offline_models import build_tiny_models

    return build_tiny_models(REPO / "models", DATA, seed=TEST_SEED)


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


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory):
    """A real S3-compatible server on loopback for the whole session (see tests/s3_server.py)."""
    from tests.s3_server import start_s3_server

    server = start_s3_server(tmp_path_factory.mktemp("s3-data"))
    yield server
    server.stop()


@pytest.fixture()
def s3_store(s3_server, tmp_path):
    """An S3 store on a fresh bucket with a fresh node cache."""
    import uuid

    from common.s3_store import S3ArtifactStore

    return S3ArtifactStore(
        endpoint=s3_server.endpoint,
        access_key=s3_server.access_key,
        secret_key=s3_server.secret_key,
        bucket=f"t-{uuid.uuid4().hex[:12]}",
        cache_dir=tmp_path / "cache",
    )
