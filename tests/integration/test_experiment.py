"""`montessori experiment` on the tiny models: seeds pooled, a killed run resumed, and the loops run on the
controller."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from cli.main import main as montessori
from common.artifacts import LocalArtifactStore
from tests.conftest import LOOP_SEEDS, REPO
from tests.loop_invariants import assert_rounds_consistent

TINY = str(REPO / "configs" / "tiny.yaml")
#: The experiment pools the suite's two loop seeds; its run on the controller uses a third.
SEEDS = f"{LOOP_SEEDS[0]},{LOOP_SEEDS[1]}"
FIRST, CONTROLLER_SEED = str(LOOP_SEEDS[0]), str(LOOP_SEEDS[1] + 2)
QUICK = ["--set", "iterations=1", "--set", "evaluation.shift_samples=3"]


def experiment_argv(store, out, seeds: str) -> list[str]:
    return [
        "experiment",
        "--config",
        TINY,
        "--set",
        f"artifacts={store}",
        *QUICK,
        "--seeds",
        seeds,
        "--out",
        str(out),
        "--no-progress",
    ]


def manifests(store: LocalArtifactStore, prefix: str) -> dict[str, str]:
    return {key: store.ref(key).sha256 for key in store.list(prefix) if key.endswith("/manifest.json")}


def test_a_killed_experiment_resumes_and_pools_its_seeds(tiny_models, tmp_path):
    store_root, out = tmp_path / "store", tmp_path / "report"
    argv = [sys.executable, "-m", "cli.main", *experiment_argv(store_root, out, SEEDS)]
    env = {**os.environ, "MONTESSORI_LOG_JSON": "1"}
    process = subprocess.Popen(argv, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    marker = store_root / "loops" / f"tiny-seed{FIRST}" / "iter-1" / "scores" / "manifest.json"
    deadline = time.monotonic() + 600
    while not marker.exists() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.2)
    assert marker.exists(), "seed 0 never reached its influence scores"
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=60)
    store = LocalArtifactStore(store_root)
    # The stages the loop had recorded as completed (a stage killed between its manifest and the state is redone).
    before = {
        store.key_of(stage["manifest"]["uri"]): stage["manifest"]["sha256"]
        for stage in store.get_json(f"loops/tiny-seed{FIRST}/state.json")["stages"].values()
    }

    assert montessori(experiment_argv(store_root, out, SEEDS)) == 0

    after = manifests(store, f"loops/tiny-seed{FIRST}")
    assert before and all(after[key] == digest for key, digest in before.items())  # completed stages were not redone
    experiment = json.loads((out / "experiment.json").read_text())
    assert experiment["seeds"] == list(LOOP_SEEDS) and experiment["draws"] == 2
    pooled = experiment["pooled"]["comparisons"]["montessori_vs_self_instruct"]
    per_unit = [
        u
        for seed in SEEDS.split(",")
        for u in experiment["per_seed"][seed]["comparisons"]["montessori_vs_self_instruct"]["per_unit"]
    ]
    assert pooled["units"] == 4 and pooled["mean"] == pytest.approx(sum(per_unit) / 4)
    assert pooled["ci_low"] <= pooled["mean"] <= pooled["ci_high"]
    for seed in SEEDS.split(","):  # whichever rounds of each draw formed pairs
        assert_rounds_consistent(store, store.get_json(f"loops/tiny-seed{seed}/summary.json"), f"tiny-seed{seed}")
    assert {
        "montessori_below_self_instruct_seeds",
        "montessori_below_self_instruct_ci_excludes_zero",
        "montessori_below_base",
        "self_instruct_below_base",
    } <= set(experiment["verdict"])
    assert "data:image/png;base64," in (out / "report.html").read_text()
    assert store.get_json("experiments/tiny/experiment.json") == experiment

    # A rerun of a finished experiment reads its loops back: nothing is trained again.
    done = manifests(store, "loops")
    assert montessori(experiment_argv(store_root, out, SEEDS)) == 0
    assert manifests(store, "loops") == done


def test_the_judge_compares_each_seeds_students_pairwise(tiny_models, tmp_path):
    # Mechanics only: the tiny teacher is no judge of quality. The experiment's loops are reused from a first run.
    store_root, out = tmp_path / "store", tmp_path / "report"
    assert montessori(experiment_argv(store_root, out, FIRST)) == 0
    assert (
        montessori(
            [*experiment_argv(store_root, out, FIRST), "--judge-model", str(tiny_models[0]), "--judge-rows", "3"]
        )
        == 0
    )
    judged = json.loads((out / "experiment.json").read_text())["judge"]
    seed = judged["per_seed"][FIRST]
    assert seed["a"].endswith("iter-1/student/model") and seed["b"].endswith("self_instruct-0/student/model")
    assert 0.0 <= judged["pooled_win_rate"]["mean"] <= 1.0 and judged["pooled_win_rate"]["n"] == 3


def test_bad_seeds_are_rejected_naming_the_flag(tmp_path, capsys):
    assert montessori(experiment_argv(tmp_path / "store", tmp_path / "out", "0,zero")) == 2
    assert "--seeds" in capsys.readouterr().err
    assert not (tmp_path / "store").exists()


def test_an_experiment_runs_its_loops_on_the_controller(services, tiny_models, tmp_path, monkeypatch):
    for key, value in services["env"].items():
        monkeypatch.setenv(key, value)
    store = services["store"]
    argv = experiment_argv(store.root_uri, tmp_path / "report", CONTROLLER_SEED)
    argv[argv.index("--seeds") : argv.index("--seeds")] = [
        "--controller",
        f"127.0.0.1:{services['ports']['controller']}",
        "--insecure",
    ]
    assert montessori(argv) == 0
    experiment = json.loads((tmp_path / "report" / "experiment.json").read_text())
    assert experiment["loops"][CONTROLLER_SEED]["loop_id"] == f"tiny-seed{CONTROLLER_SEED}"
    assert store.get_json(f"loops/tiny-seed{CONTROLLER_SEED}/summary.json")["status"] == "succeeded"
    assert "montessori_vs_self_instruct" in experiment["pooled"]["comparisons"]
