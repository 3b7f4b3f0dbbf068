"""What ``pip install`` gives: the client extra is a working ``montessori`` without torch.

The slow test installs the package from this tree into a fresh virtual environment with pip's own configuration
(its index and wheel cache: a fresh environment has no wheels of its own, so ``--no-index`` cannot work), runs the
client commands there, and fails if torch was installed. The fast one checks in this environment that the client
commands' modules import no ML library, which is what lets the client extra leave them out.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
#: What a wheel is built from (pyproject's packages and readme); the rest of the tree (models/, .venv) stays out.
SOURCES = ("pyproject.toml", "README.md", "cli", "common", "services", "montessori")
#: A small Llama-shaped config.json for `montessori plan`.
TINY_LLAMA = {
    "model_type": "llama",
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_attention_heads": 4,
    "num_hidden_layers": 2,
    "vocab_size": 1000,
}
#: Modules the client commands must never load: each is in the worker extra only.
ML_MODULES = ("torch", "transformers", "trl", "peft", "datasets", "accelerate")
#: The worker extra's server packages: no client command loads them either (the parser of `montessori serve` holds
#: every service's flags, from services/<name>/main.py, whose start-up imports them lazily).
SERVER_MODULES = ("prometheus_client", "kubernetes")


def _pins(path: Path) -> dict[str, str]:
    pins = {}
    for line in path.read_text().splitlines():
        name, sep, version = line.split("#")[0].strip().partition("==")
        if sep:
            pins[name.lower().replace("_", "-")] = version
    return pins


def test_pyproject_declares_every_runtime_requirement_at_the_tested_version():
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    declared = {}
    extras = project["optional-dependencies"]
    for requirement in [*project["dependencies"], *extras["client"], *extras["worker"]]:
        name = requirement.split("[")[0].split("=")[0].split(">")[0].split("<")[0].strip().lower()
        declared[name] = requirement
    tested = {**_pins(REPO / "constraints.txt"), **_pins(REPO / "requirements.txt")}
    for name, version in _pins(REPO / "requirements.txt").items():
        assert name in declared, f"requirements.txt installs {name}, pyproject.toml does not declare it"
        if "==" in declared[name]:
            assert declared[name].endswith(f"=={version}"), (declared[name], version)
    assert "torch" not in " ".join(project["dependencies"] + extras["client"])
    for name in ("torch", "transformers", "accelerate", "trl", "peft", "datasets"):  # the tested ML stack, exactly
        assert f"{name}=={tested.get(name, '2.13.0')}" in extras["worker"], name


def test_the_client_commands_import_no_ml_library():
    """The parser of every command, and the modules behind loop / models / artifacts / loop report, load no torch
    (nor prometheus_client or kubernetes: the worker extra)."""
    probe = (
        "import sys, cli.main\n"
        "cli.main.make_parser()\n"
        "import cli.loop_client, cli.models, cli.artifacts, cli.report, cli.report.charts, common.s3_store\n"
        "import common.protoconv, services.controller.config, common.lineage, common.transport\n"
        "import cli.plan, cli.sections, common.memory_plan\n"
        "from services.controller.config import RunConfig\n"
        "cli.sections.resolved(RunConfig())\n"
        f"print([m for m in {ML_MODULES + SERVER_MODULES!r} if m in sys.modules])"
    )
    out = subprocess.run(
        [sys.executable, "-c", probe], cwd=REPO, capture_output=True, text=True, check=True, timeout=120
    ).stdout
    assert json.loads(out.strip().replace("'", '"')) == []


@pytest.mark.slow
def test_pip_install_client_extra_gives_a_working_montessori_without_torch(tmp_path):
    tree = tmp_path / "src"
    tree.mkdir()
    for name in SOURCES:
        source = REPO / name
        if source.is_dir():
            shutil.copytree(source, tree / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        else:
            shutil.copy2(source, tree / name)
    # The wheel is built with this environment's setuptools (no isolated build environment to install), and pip
    # installs it and its dependencies into an environment without pip of its own, without byte-compiling: the
    # same resolution from the same registry as `pip install '.[client]'`, in a fraction of the time.
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check"]

    def step(command: list[str]) -> None:
        result = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
        assert result.returncode == 0, f"{' '.join(command)}:\n{result.stderr[-3000:]}"

    step([*pip, "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", str(tmp_path / "wheels"), str(tree)])
    (wheel,) = (tmp_path / "wheels").glob("montessori-*.whl")
    venv = tmp_path / "venv"
    step([sys.executable, "-m", "venv", "--without-pip", str(venv)])
    python = str(venv / "bin" / "python")
    step(
        [
            *pip,
            "--python",
            python,
            "install",
            "-q",
            "--no-compile",
            "-c",
            str(REPO / "constraints.txt"),
            f"{wheel}[client]",
        ]
    )
    montessori = str(venv / "bin" / "montessori")

    def run(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([montessori, *args], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)

    for command in ([], ["loop"], ["models", "push"], ["loop", "report"], ["artifacts"], ["plan"]):
        result = run(*command, "--help")
        assert result.returncode == 0, (command, result.stderr[-2000:])
        assert "usage: montessori" in result.stdout
    installed = subprocess.run(
        [
            str(venv / "bin" / "python"),
            "-c",
            f"import importlib.util as u; print([m for m in {ML_MODULES!r} if u.find_spec(m)])",
        ],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    assert installed == "[]", f"the client extra installed {installed}"
    # The client commands do their work: a model folder pushed to a store, a report with plots from a summary.
    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text('{"model_type": "llama"}')
    (model / "model.safetensors").write_bytes(b"\0" * 64)
    pushed = run("models", "push", str(model), "--store", f"file://{tmp_path / 'store'}", "--name", "m", "--json")
    assert pushed.returncode == 0, pushed.stderr[-2000:]
    assert json.loads(pushed.stdout)["uri"].startswith("file://")
    report = run("loop", "report", str(REPO / "bench" / "results" / "make-run-demo.json"), "--out", "report")
    assert report.returncode == 0, report.stderr[-2000:]
    assert list((tmp_path / "report").glob("*.png"))
    # `montessori plan` resolves the settings as the workers do, without torch.
    (model / "config.json").write_text(json.dumps(TINY_LLAMA))
    models = ["--model-config", f"teacher={model}", "--model-config", f"student={model}"]
    planned = run("plan", "--gpu-memory", "80", *models, "--json")
    assert planned.returncode == 0, planned.stderr[-2000:]
    assert {s["stage"] for s in json.loads(planned.stdout)["stages"]} >= {"teacher", "influence", "sft", "dpo"}
    # A worker's command says which extra it needs, on one line, instead of a traceback.
    worker = run("run", "--config", str(REPO / "configs" / "tiny.yaml"))
    assert worker.returncode == 2, worker.stderr[-2000:]
    assert "pip install 'montessori[worker]'" in worker.stderr
    assert "Traceback" not in worker.stderr
