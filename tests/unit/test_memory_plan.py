"""``montessori plan``: the memory estimates against the peaks one H200 measured, and the refusal of a config that
cannot fit (bench/results/gpu-check-h200.json: random-weight models of the real configurations)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from common.errors import FailedPrecondition
from common.memory_plan import (
    GIB,
    ModelShape,
    check_fits,
    generation_memory,
    influence_memory,
    plan_stages,
    training_memory,
)

REPO = Path(__file__).resolve().parents[2]
CHECK = json.loads((REPO / "bench" / "results" / "gpu-check-h200.json").read_text())
GPU_EXAMPLE = REPO / "k8s" / "overlays" / "gpu" / "examples" / "run-config.yaml"
#: The H200's memory as torch reported it.
H200_GIB = CHECK["environment"]["memory_gib"]
#: Cells whose measured peak holds memory that is not the cell's own, and why.
NOT_THE_CELLS_OWN = {
    # Its peak (32.3 GiB) is above the same model's DPO cell (22.2 GiB), which holds everything SFT does plus a
    # reference model: memory the influence cells before it left on the device.
    ("llama-3.2-1b", "sft"),
}


def shape_of(model: str) -> ModelShape:
    entry = CHECK["models"][model]
    return ModelShape.from_config({**entry["config"], "model_type": entry["family"]})


@pytest.mark.parametrize("model", sorted(CHECK["models"]))
def test_the_parameter_count_from_config_json_is_what_torch_counted(model):
    assert shape_of(model).parameters == CHECK["models"][model]["parameters"]


def _estimate(cell: dict) -> float:
    """The estimate of a measured cell with the bench's own settings (bench/gpu_check.py), in GiB."""
    settings = CHECK["settings"]
    plan = next(m for m in settings["models"] if m["name"] == cell["model"])
    shape = shape_of(cell["model"])
    autocast = plan["train_precision"] == "autocast"  # fp32 weights under bf16 autocast, else bf16 weights
    kind = cell["cell"]
    if kind == "generate":
        estimate = generation_memory(
            shape,
            model="teacher",
            batch=settings["generate_batch"],
            length=settings["generate_prompt"] + settings["generate_new"],
            weight_bytes=2,
            field="",
        ).bytes
        # The bench casts its fp32 model to bf16 inside the measured cell: both copies are alive for a moment.
        return (estimate + (4 * shape.parameters if autocast else 0)) / GIB
    if kind in ("sft", "dpo"):
        return training_memory(
            kind,
            shape,
            model="m",
            sequences=settings["train_batch"],
            length=settings["train_tokens"],
            weight_bytes=4 if autocast else 2,
            reference_model=kind == "dpo",  # the bench's DPO is a full fine-tune beside a frozen copy
            prefix=kind,
        ).gib
    return influence_memory(
        shape,
        model="student",
        mode=kind,
        optimizer=cell["optimizer"],
        candidate_batch=1,
        reference_batch=plan["reference_batch_size"],
        length=settings["prompt_tokens"] + settings["response_tokens"],
    ).gib


MEASURED = [c for c in CHECK["cells"] if c["status"] == "ok" and c["cell"] != "official"]


@pytest.mark.parametrize("cell", MEASURED, ids=[f"{c['model']}-{c['cell']}" for c in MEASURED])
def test_each_estimate_bounds_the_measured_peak_closely(cell):
    ratio = _estimate(cell) / cell["peak_memory_gib"]
    if (cell["model"], cell["cell"]) in NOT_THE_CELLS_OWN:
        assert 0.7 <= ratio <= 1.6, ratio
    else:
        assert 1.0 <= ratio <= 1.6, f"estimate / measured peak = {ratio:.2f}"


def _gpu_example_stages(document: dict, tmp_path: Path):
    from cli.plan import _resolved
    from common.config import from_dict
    from services.controller.config import RunConfig

    folder = tmp_path / "llama-3-8b"
    folder.mkdir(exist_ok=True)
    (folder / "config.json").write_text(json.dumps({**CHECK["models"]["llama-3-8b"]["config"], "model_type": "llama"}))
    shape = ModelShape.from_config(json.loads((folder / "config.json").read_text()))
    config = _resolved(from_dict(RunConfig, document))
    return plan_stages(config, {"teacher": shape, "student": shape}, gpus=1)


def test_the_gpu_example_fits_one_h200_by_its_own_arithmetic(tmp_path):
    document = yaml.safe_load(GPU_EXAMPLE.read_text())
    stages = _gpu_example_stages(document, tmp_path)
    check_fits(stages, H200_GIB)  # no FailedPrecondition
    influence = next(s for s in stages if s.stage == "influence")
    measured = next(c for c in CHECK["cells"] if c["model"] == "llama-3-8b" and c["cell"] == "exact")
    assert influence.gib >= measured["peak_memory_gib"]  # its setting (sgd, exact) is the one measured, at 2x length


def test_the_paper_optimizer_on_an_8b_student_is_refused_naming_stage_field_and_numbers(tmp_path):
    document = yaml.safe_load(GPU_EXAMPLE.read_text())
    document["influence"] = {"optimizer": "faithful"}
    with pytest.raises(FailedPrecondition) as caught:
        check_fits(_gpu_example_stages(document, tmp_path), H200_GIB)
    message = str(caught.value)
    assert caught.value.field == "influence.optimizer"
    assert "stage influence" in message and "GiB" in message and f"{H200_GIB:g} GiB GPU" in message


def test_montessori_plan_exits_2_on_one_line(tmp_path, capsys):
    from cli.main import main

    config = tmp_path / "run.yaml"
    config.write_text(yaml.safe_dump({"models": {"teacher": "models/tiny-teacher", "student": "models/tiny-student"}}))
    model = tmp_path / "m"
    model.mkdir()
    (model / "config.json").write_text(json.dumps({**CHECK["models"]["llama-3-8b"]["config"], "model_type": "llama"}))
    args = ["plan", "--config", str(config), "--gpu-memory", "24", "--model-config", f"student={model}"]
    assert main([*args, "--model-config", f"teacher={model}"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("montessori: error: ") and "stage teacher" in err[0], err
    assert main(["plan", "--config", str(config), "--gpu-memory", "80", "--json"]) == 0  # the tiny models fit
    stages = json.loads(capsys.readouterr().out)["stages"]
    assert {s["stage"] for s in stages} == {"teacher", "influence", "warmup", "sft", "dpo"}
