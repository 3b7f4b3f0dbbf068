"""The device check (bench/gpu_check.py) at its smoke size on the CPU, and the device setting it and the
services resolve (common/device.py)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from common.device import is_device_setting, resolve_device
from common.errors import FailedPrecondition, InvalidArgument

REPO = Path(__file__).resolve().parents[2]
CELLS = ("official", "exact", "first_order", "projected", "sft", "dpo", "generate")


def test_the_smoke_check_measures_every_cell_on_the_cpu(tmp_path):
    out = tmp_path / "gpu-check.json"
    env = {**os.environ, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1"}
    done = subprocess.run(
        [sys.executable, "bench/gpu_check.py", "--size", "smoke", "--device", "cpu", "--out", str(out)],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(out.read_text())
    assert report["environment"]["device"] == "cpu" and report["size"] == "smoke"
    cells = {cell["cell"]: cell for cell in report["cells"]}
    assert set(cells) == set(CELLS)
    for _name, cell in cells.items():
        assert cell["status"] == "ok", cell
        assert cell["rate"] > 0 and cell["seconds"] > 0 and cell["flops_per_unit"] > 0 and cell["tflops"] > 0, cell
    assert cells["generate"]["count"] == 2 * 8  # batch x new tokens: every row generated all its tokens
    assert cells["sft"]["loss_finite"] and cells["dpo"]["loss_finite"]
    # Random candidates on a random student still move the reference loss differently: the scores are real numbers.
    assert cells["exact"]["influence_spread"] > 0
    ratios = report["ratios"]["tiny-llama"]
    for mode in ("exact", "first_order", "projected"):
        assert ratios[f"{mode}_vs_official"] == pytest.approx(cells[mode]["rate"] / cells["official"]["rate"])
    assert "tiny-llama" in report["models"] and report["models"]["tiny-llama"]["parameters"] > 0
    assert "exact" in done.stdout and "wrote" in done.stdout  # the table was printed


def test_cpu_resolves_to_the_cpu():
    assert resolve_device("cpu") == torch.device("cpu")


def test_auto_is_cuda_when_there_is_one_else_the_cpu():
    assert resolve_device("auto") == torch.device("cuda" if torch.cuda.is_available() else "cpu")


def test_auto_without_cuda_is_the_cpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device("auto") == torch.device("cpu")


@pytest.mark.parametrize("setting", ["gpu", "cuda:", "cuda:-1", "Cuda", "cpu:0", "", None, 0])
def test_a_misspelt_setting_is_an_invalid_argument_naming_the_field(setting):
    assert not is_device_setting(setting)
    with pytest.raises(InvalidArgument) as caught:
        resolve_device(setting)
    assert caught.value.field == "device"
    with pytest.raises(InvalidArgument) as caught:
        resolve_device(setting, field="influence.device")
    assert caught.value.field == "influence.device"


@pytest.mark.parametrize("setting", ["cuda", "cuda:0", "cuda:7"])
def test_cuda_asked_for_without_one_is_a_failed_precondition_naming_the_field(monkeypatch, setting):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(FailedPrecondition) as caught:
        resolve_device(setting)
    assert caught.value.field == "device"


def test_a_cuda_index_beyond_the_machine_is_a_failed_precondition(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert resolve_device("cuda:1") == torch.device("cuda:1")
    assert resolve_device("cuda") == torch.device("cuda")
    with pytest.raises(FailedPrecondition) as caught:
        resolve_device("cuda:2")
    assert caught.value.field == "device"


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_resolves_to_a_device_that_holds_tensors():
    device = resolve_device("cuda:0")
    assert torch.ones(2, device=device).sum().item() == 2.0
