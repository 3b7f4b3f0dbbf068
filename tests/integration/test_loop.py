"""The whole loop end to end on the tiny models, in process and through the CLI."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from cli.local import local_runner
from common.artifacts import LocalArtifactStore
from common.config import load_config
from services.controller.config import RunConfig
from tests.conftest import REPO

TINY = REPO / "configs" / "tiny.yaml"
STAGES = ("warmup-data", "warmup", "probe-data", "scores", "pairs", "train-data", "student")


@pytest.fixture(scope="module")
def loop_run(tiny_models, tmp_path_factory):
    root = tmp_path_factory.mktemp("store")
    config = load_config(RunConfig, TINY, [f"artifacts={root}", "loop_id=it"])
    summary = local_runner(config).run()
    return LocalArtifactStore(root), summary


def test_every_iteration_publishes_every_stage_with_a_manifest(loop_run):
    store, summary = loop_run
    assert [row["iteration"] for row in summary["iterations"]] == [1, 2]
    for k in (1, 2):
        for stage in STAGES:
            manifest = store.get_json(f"loops/it/iter-{k}/{stage}/manifest.json")
            for ref in manifest["outputs"].values():
                assert store.ref(store.key_of(ref["uri"])).sha256 == ref["sha256"]
            assert manifest["config_sha256"] and manifest["code_version"]
    assert store.get_json("loops/it/summary.json")["iterations"] == summary["iterations"]


def test_the_teacher_is_updated_and_the_next_iteration_probes_the_trained_student(loop_run):
    store, summary = loop_run
    assert sum(row["pairs"] for row in summary["iterations"]) > 0
    trained = [row for row in summary["iterations"] if row["pairs"]]
    assert all(row["dpo_reward_margin"] is not None for row in trained)
    assert len(summary["iterations"][-1]["teacher_adapters"]) == len(trained)
    warmup2 = store.get_json("loops/it/iter-2/warmup/manifest.json")
    student1 = store.get_json("loops/it/iter-1/student/manifest.json")
    assert warmup2["inputs"]["student"]["base"] == student1["outputs"]["model"]  # same URI, same digest
    # The training set is written by the DPO-updated teacher and the student trains from the base student.
    assert summary["iterations"][0]["pairs"] > 0
    data1 = store.get_json("loops/it/iter-1/train-data/manifest.json")
    dpo1 = store.get_json("loops/it/iter-1/dpo/manifest.json")
    assert data1["inputs"]["teacher"]["model"]["adapters"] == [dpo1["outputs"]["adapter"]]
    assert student1["inputs"]["student"]["base"]["path"].endswith("tiny-student")


def test_pairs_come_from_scored_probe_groups(loop_run):
    store, _ = loop_run
    scores = {r["id"]: r["influence"] for r in store.get_jsonl("loops/it/iter-1/scores/scores.jsonl")}
    candidates = {r["id"]: r for r in store.get_jsonl("loops/it/iter-1/probe-data/candidates.jsonl")}
    pairs = store.get_jsonl("loops/it/iter-1/pairs/pairs.jsonl")
    assert pairs  # the tiny config (fixed seed) forms pairs in iteration 1
    for pair in pairs:
        chosen, rejected = candidates[pair["chosen_id"]], candidates[pair["rejected_id"]]
        assert scores[chosen["id"]] > 0 > scores[rejected["id"]]
        assert chosen["group_id"] == rejected["group_id"] and pair["prompt"] == chosen["prompt"]


def test_evaluation_compares_independent_draws_of_both_arms_row_by_row(loop_run):
    store, summary = loop_run
    evaluation = summary["evaluation"]
    assert evaluation["draws"] == 2
    assert set(evaluation["students"]) == {
        "base",
        "montessori-0",
        "montessori-1",
        "self_instruct-0",
        "self_instruct-1",
        "self_instruct-0-sft-seed",
    }
    # Every training set of the comparison was sampled with a seed of its own (the last evaluation shared one).
    seeds = [
        store.get_json(store.key_of(s["train_data_uri"]).rsplit("/", 1)[0] + "/manifest.json")["config"]["seed"]
        for name, s in evaluation["students"].items()
        if name != "base" and not name.endswith("sft-seed")
    ]
    assert len(seeds) == len(set(seeds)) == 4
    losses = {
        name: [r["loss"] for r in store.get_jsonl(store.key_of(s["losses_uri"]))]
        for name, s in evaluation["students"].items()
    }
    assert {len(v) for v in losses.values()} == {evaluation["eval_rows"]}
    # The paired difference is the mean of the per-row differences over both draws, inside its interval.
    diff = evaluation["comparisons"]["montessori_vs_self_instruct"]
    expected = sum(
        losses[f"montessori-{d}"][i] - losses[f"self_instruct-{d}"][i]
        for d in range(2)
        for i in range(evaluation["eval_rows"])
    ) / (2 * evaluation["eval_rows"])
    assert (
        abs(diff["mean"] - expected) < 1e-9 and diff["ci_low"] <= diff["mean"] <= diff["ci_high"] and diff["units"] == 2
    )
    assert {"montessori_vs_base", "self_instruct_vs_base", "null_sft_seed", "null_data_draw"} <= set(
        evaluation["comparisons"]
    )
    assert set(evaluation["per_category"]) <= {
        r["category"] for r in store.get_jsonl(store.key_of(evaluation["students"]["base"]["losses_uri"]))
    }


def test_teacher_shift_scores_fresh_data_of_every_teacher_version_on_one_student(loop_run):
    store, summary = loop_run
    shift = summary["evaluation"]["teacher_shift"]
    trained_rounds = sum(1 for row in summary["iterations"] if row["pairs"])
    assert [v["version"] for v in shift["versions"]] == list(range(trained_rounds + 1))
    assert shift["student_uri"].endswith("iter-1/warmup/model")
    for v in shift["versions"]:
        scores = store.get_jsonl(store.key_of(v["scores_uri"]))
        assert len(scores) == v["samples"] and v["ci_low"] <= v["influence_mean"] <= v["ci_high"]
    assert [d["version"] for d in shift["differences"]] == list(range(1, trained_rounds + 1))
    for d in shift["differences"]:
        for name in ("", "positive_share_", "length_controlled_"):
            assert d[f"{name}ci_low"] <= d[f"{name}ci_high"]
        assert d["ci_low"] <= d["mean"] <= d["ci_high"] and "positive_share" in d and "length_controlled_mean" in d


def test_rounds_are_recorded_one_line_per_round(loop_run):
    store, summary = loop_run
    rounds = store.get_jsonl("loops/it/rounds.jsonl")
    assert [r["iteration"] for r in rounds] == [r["iteration"] for r in summary["iterations"]]
    assert all(r["scores_uri"].endswith("scores.jsonl") and r["train_data_uri"] for r in rounds)


def test_cli_run_prints_the_table_and_the_summary_path(tiny_models, tmp_path):
    env = {**os.environ, "MONTESSORI_LOG_JSON": "0"}
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "cli.main",
            "run",
            "--config",
            str(TINY),
            "--set",
            f"artifacts={tmp_path}",
            "--set",
            "iterations=1",
            "--set",
            "evaluation.baseline=false",
            "--report",
            str(tmp_path / "report"),
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert "Montessori-Instruct loop" in out.stdout and "DPO reward margin" in out.stdout
    report = Path(out.stdout.split("report: ")[-1].split()[0])
    assert report.name == "report.html" and "data:image/png;base64," in report.read_text()
    summary_path = Path(out.stdout.split("summary: ")[-1].split()[0].removeprefix("file://"))
    summary = json.loads(summary_path.read_text())
    assert summary_path.parent.parent == tmp_path / "loops" and len(summary["iterations"]) == 1


def quick_config(tmp_path, *overrides):
    return load_config(
        RunConfig,
        TINY,
        [f"artifacts={tmp_path}", "evaluation.baseline=false", "evaluation.shift_samples=0", *overrides],
    )


def test_continuous_mode_runs_until_max_rounds(tiny_models, tmp_path):
    runner = local_runner(quick_config(tmp_path, "continuous=true", "max_rounds=3"))
    summary = runner.run()
    assert [r["iteration"] for r in summary["iterations"]] == [1, 2, 3] and not summary["stopped"]
    # Every round appended its line (the report follows a running loop from these).
    assert [r["iteration"] for r in runner.store.get_jsonl(f"{runner.prefix}/rounds.jsonl")] == [1, 2, 3]


def test_continuous_mode_stops_when_the_student_stops_improving(tiny_models, tmp_path):
    runner = local_runner(quick_config(tmp_path, "continuous=true", "max_rounds=6", "patience=1"))
    summary = runner.run()
    losses = [r["student_reference_loss"] for r in summary["iterations"]]
    assert len(losses) < 6 or all(b < a for a, b in zip(losses, losses[1:]))
    if len(losses) < 6:
        assert losses[-1] >= min(losses[:-1])  # it stopped because the last round did not improve


def test_a_stopped_loop_keeps_its_completed_rounds(tiny_models, tmp_path):
    events = []
    runner = local_runner(
        quick_config(tmp_path, "continuous=true"),
        on_event=lambda kind, *a, **k: events.append(kind),
        should_stop=lambda: events.count("round_finished") >= 1,
    )
    summary = runner.run()
    assert summary["stopped"] and len(summary["iterations"]) == 1
    assert json.loads(Path(summary["summary_uri"].removeprefix("file://")).read_text())["stopped"] is True
    assert not any(p.name.endswith(".tmp") or ".tmp-" in p.name for p in tmp_path.rglob("*"))
