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
from common.lineage import lineage
from services.controller.config import RunConfig
from services.controller.loop import LoopRunner
from tests.conftest import LOOP_SEEDS, REPO
from tests.constructed import ConstructedScores
from tests.loop_invariants import assert_pairs_from_scored_groups, assert_rounds_consistent

TINY = REPO / "configs" / "tiny.yaml"
STAGES = ("warmup-data", "warmup", "probe-data", "scores", "pairs", "train-data", "student")


@pytest.fixture(scope="module", params=LOOP_SEEDS, ids=lambda seed: f"loop-seed-{seed}")
def loop_run(request, tiny_models, tmp_path_factory):
    """The tiny loop as configured, under each of the suite's loop seeds: whether a round forms pairs is the
    draw's business, so the tests on it assert what holds for every outcome."""
    root = tmp_path_factory.mktemp("store")
    config = load_config(RunConfig, TINY, [f"artifacts={root}", "loop_id=it", f"seed={request.param}"])
    summary = local_runner(config).run()
    return LocalArtifactStore(root), summary


@pytest.fixture(scope="module")
def constructed_run(tiny_models, tmp_path_factory):
    """Two rounds in which pairs form by construction (tests/constructed.py: real stages, influences measured and
    then centred within each prompt group), with 8 samples for each of 8 prompts, so that a prompt group keeps
    two candidates in every round: the teacher keeps about 4 in 10 samples, and a round of 8 such groups with at
    most one survivor each is a chance of about 1 in 10**8."""
    root = tmp_path_factory.mktemp("constructed")
    config = load_config(
        RunConfig,
        TINY,
        [
            f"artifacts={root}",
            "loop_id=ct",
            f"seed={LOOP_SEEDS[0]}",
            "synthesis.samples_per_prompt=8",
            "evaluation.baseline=false",
            "evaluation.shift_samples=0",
        ],
    )
    store = LocalArtifactStore(root)
    summary = LoopRunner(config, store=store, executor=ConstructedScores(store)).run()
    return store, summary


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


def test_each_round_trains_the_teacher_on_its_pairs_or_says_why_it_kept_it(loop_run):
    store, summary = loop_run
    assert_rounds_consistent(store, summary, "it")
    for row in summary["iterations"]:
        assert_pairs_from_scored_groups(store, "it", row["iteration"])


def test_rounds_with_pairs_train_the_teacher_that_writes_the_next_data__constructed_scores(constructed_run):
    store, summary = constructed_run
    assert [row["pairs"] > 0 for row in summary["iterations"]] == [True, True]
    assert_rounds_consistent(store, summary, "ct")
    assert len(summary["iterations"][-1]["teacher_adapters"]) == 2
    # Round 2's candidates were written by the teacher DPO trained in round 1.
    probe2 = store.get_json("loops/ct/iter-2/probe-data/manifest.json")
    assert probe2["inputs"]["teacher"]["model"]["adapters"] == [
        store.get_json("loops/ct/iter-1/dpo/manifest.json")["outputs"]["adapter"]
    ]


def test_pairs_are_every_helpful_harmful_combination_of_a_group__constructed_scores(constructed_run):
    store, summary = constructed_run
    for row in summary["iterations"]:
        pairs = assert_pairs_from_scored_groups(store, "ct", row["iteration"])
        rows = store.get_jsonl(f"loops/ct/iter-{row['iteration']}/scores/scores.jsonl")
        groups = {r["group_id"] for r in rows}
        expected = sum(
            sum(r["influence"] > 0 for r in rows if r["group_id"] == g)
            * sum(r["influence"] < 0 for r in rows if r["group_id"] == g)
            for g in groups
        )
        assert len(pairs) == expected == row["pairs"] > 0


def test_lineage_walks_from_an_adapter_to_the_teacher_and_the_candidates__constructed_scores(constructed_run):
    store, _ = constructed_run
    manifest = store.get_json("loops/ct/iter-1/dpo/manifest.json")
    tree = lineage(store, manifest["outputs"]["adapter"]["uri"])
    assert tree.stage == "train-teacher"
    (pairs,) = [n for n in tree.inputs if n.stage == "pairs"]
    assert {n.stage for n in pairs.inputs} == {"generate", "score"}
    (scores,) = [n for n in pairs.inputs if n.stage == "score"]
    assert {n.stage for n in scores.inputs} >= {"generate", "train-student"}
    assert "\n".join(tree.render()).count("<-") >= 5


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
