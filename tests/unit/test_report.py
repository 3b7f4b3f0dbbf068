"""``montessori loop report``: a synthetic summary and its score files rendered to Markdown + HTML + PNGs."""

from __future__ import annotations

import json
import re

import pytest

from cli.report import (
    ci_verdict,
    comparison_sentence,
    load_summary,
    render_experiment_report,
    render_loop_report,
    rounds_table,
)
from common.artifacts import LocalArtifactStore
from common.errors import InvalidArgument, NotFound

LOOP = "loop-a"


def comparison(mean: float, low: float, high: float) -> dict:
    return {"mean": mean, "ci_low": low, "ci_high": high, "rows": 40, "units": 120, "per_unit": [mean] * 3}


def shift() -> dict:
    versions = [
        {
            "version": v,
            "teacher": f"teacher-r{v}",
            "samples": 16,
            "influence_mean": 0.01 * v,
            "ci_low": 0.01 * v - 0.02,
            "ci_high": 0.01 * v + 0.02,
            "positive_share": 0.4 + 0.1 * v,
            "positive_share_ci_low": 0.3 + 0.1 * v,
            "positive_share_ci_high": 0.5 + 0.1 * v,
            "length_spearman": 0.1,
            "scores_uri": "s",
        }
        for v in (0, 1)
    ]
    return {
        "student_uri": "file:///student",
        "samples": 32,
        "versions": versions,
        "length_spearman_pooled": 0.12,
        "differences": [
            {
                "version": 1,
                "vs": 0,
                "mean": 0.01,
                "ci_low": 0.002,
                "ci_high": 0.02,
                "positive_share": 0.1,
                "positive_share_ci_low": -0.05,
                "positive_share_ci_high": 0.25,
                "length_controlled_mean": 0.01,
                "length_controlled_ci_low": -0.01,
                "length_controlled_ci_high": 0.03,
            }
        ],
    }


def make_round(store: LocalArtifactStore, k: int) -> dict:
    prefix = f"loops/{LOOP}/iter-{k}"
    rows = [
        {
            "id": f"c{i}",
            "group_id": f"g{i // 3}",
            "influence": 0.01 * (i - 4) - 0.02,
            "influence_raw": 0.01 * (i - 4) - 0.02,
            "influence_centred": 0.01 * (i - 4),
        }
        for i in range(9)
    ]
    if k == 2:  # an older scores file: only `influence`
        rows = [{"id": r["id"], "group_id": r["group_id"], "influence": r["influence"]} for r in rows]
    scores = store.put_jsonl(f"{prefix}/scores/scores.jsonl", rows)
    return {
        "iteration": k,
        "candidates": 9,
        "groups": 3,
        "pairs": 3,
        "influence_mean": 0.0,
        "influence_min": -0.06,
        "influence_max": 0.02,
        "positive_share_raw": 0.3,
        "positive_share_centred": 0.5,
        "shared_step_influence": -0.02,
        "dpo_reward_margin": 0.1 * k,
        "dpo_reward_accuracy": 0.6,
        "heldout_reward_margin": None if k == 1 else 0.05,
        "heldout_reward_accuracy": None if k == 1 else 0.55,
        "heldout_pairs": None if k == 1 else 4,
        "student_reference_loss": 3.0 - 0.1 * k,
        "teacher_adapters": [store.uri(f"{prefix}/dpo/adapter")],
        "teacher_version": f"teacher-r{k}",
        "influence_mode": "exact",
        "seconds": 12.5,
        "scores_uri": scores.uri,
        "train_data_uri": store.uri(f"{prefix}/train-data/candidates.jsonl"),
        "pairs_uri": store.uri(f"{prefix}/pairs/pairs.jsonl"),
    }


@pytest.fixture
def store(tmp_path):
    (tmp_path / "store").mkdir()  # an existing (empty) store: the root is otherwise made by the first write
    return LocalArtifactStore(tmp_path / "store")


@pytest.fixture
def summary(store) -> dict:
    comparisons = {
        "montessori_vs_self_instruct": comparison(-0.15, -0.2, -0.1),
        "montessori_vs_base": comparison(0.05, -0.1, 0.1),
        "self_instruct_vs_base": comparison(0.2, 0.1, 0.3),
        "null_sft_seed": comparison(0.0, -0.05, 0.05),
        "null_data_draw": comparison(0.01, -0.04, 0.06),
    }
    students = {
        "base": {"loss": 2.3, "losses_uri": "file:///l"},
        "montessori-0": {
            "loss": 2.4,
            "losses_uri": "file:///l",
            "train_data_uri": "file:///t",
            "teacher_version": "teacher-r2",
        },
        "self_instruct-0": {"loss": 2.55, "losses_uri": "file:///l", "train_data_uri": "file:///t"},
    }
    return {
        "loop_id": LOOP,
        "status": "succeeded",
        "store": store.uri(f"loops/{LOOP}"),
        "seconds": 99.0,
        "iterations": [make_round(store, 1), make_round(store, 2), make_round(store, 3)],
        "evaluation": {
            "eval_rows": 40,
            "draws": 3,
            "students": students,
            "comparisons": comparisons,
            "per_category": {"math": {"montessori_vs_self_instruct": comparison(-0.3, -0.5, -0.1)}},
            "teacher_shift": shift(),
        },
    }


def section(md: str, title: str) -> str:
    """The Markdown between heading ``title`` and the next heading."""
    return re.split(r"\n#+ ", md.split(f" {title}\n", 1)[1], maxsplit=1)[0]


def check_outputs(paths: dict, out_dir) -> str:
    page = paths["html"].read_text()
    md = paths["md"].read_text()
    referenced = re.findall(r"!\[[^\]]*\]\(([^)]+\.png)\)", md)
    assert referenced and sorted(referenced) == sorted(p.name for p in paths["images"])
    assert all((out_dir / name).is_file() for name in referenced)
    assert sorted(p.name for p in out_dir.iterdir()) == sorted(
        referenced + ["report.html", "report.md"]
    )  # no leftovers
    assert page.count("data:image/png;base64,") == len(referenced) and ".png" not in page.split("<body>")[1]
    return md


def test_loop_report_renders_every_section(summary, store, tmp_path):
    out = tmp_path / "report"
    paths = render_loop_report(summary, out, store=store)
    md = check_outputs(paths, out)
    assert {p.name for p in paths["images"]} == {
        "influence_histograms.png",
        "positive_share.png",
        "dpo.png",
        "student_loss.png",
        "heldout.png",
        "teacher_shift.png",
    }
    rounds = section(md, "Rounds")
    assert len([line for line in rounds.splitlines() if line.startswith("| ")]) == 1 + 3  # header + one row per round
    assert "scores not available" not in md  # every round's scores were read from the store
    assert (
        "Montessori − Self-Instruct: -0.15, CI [-0.2, -0.1] (120 units, 40 rows): CI excludes 0: Montessori has "
        "the lower held-out loss." in md
    )
    assert "Montessori − base: 0.05, CI [-0.1, 0.1] (120 units, 40 rows): CI includes 0: no difference shown." in md
    assert "NEGATIVE difference means the first-named student" in md
    lineage = section(md, "Teacher-version lineage")
    assert "| 2 | teacher-r2 | ./iter-2/dpo/adapter | ./iter-2/train-data/candidates.jsonl |" in lineage
    assert "version 1 vs 0: mean influence changes by 0.01 [0.002, 0.02], CI excludes 0" in md


def test_report_is_deterministic(summary, store, tmp_path):
    first = render_loop_report(summary, tmp_path / "a", store=store)
    second = render_loop_report(summary, tmp_path / "b", store=store)
    for key in ("html", "md"):
        assert first[key].read_bytes() == second[key].read_bytes()
    assert [p.read_bytes() for p in first["images"]] == [p.read_bytes() for p in second["images"]]


def test_rounds_table_has_one_row_per_round(summary):
    headers, rows = rounds_table(summary["iterations"])
    assert [row[0] for row in rows] == [1, 2, 3] and all(len(row) == len(headers) for row in rows)


@pytest.mark.parametrize(
    "low,high,expected",
    [
        (-0.2, -0.1, "CI excludes 0"),
        (0.1, 0.3, "CI excludes 0"),
        (-0.1, 0.1, "CI includes 0"),
        (0.0, 0.1, "CI includes 0"),
        (None, 0.1, "CI not available"),
    ],
)
def test_ci_verdict(low, high, expected):
    assert ci_verdict(low, high) == expected


def test_null_comparison_sentence():
    assert comparison_sentence("null_sft_seed", comparison(0.0, -0.1, 0.1)).endswith("CI includes 0.")
    assert "chance alone" in comparison_sentence("null_data_draw", comparison(0.2, 0.1, 0.3))


def test_partial_summary_of_a_running_loop(store, tmp_path):
    partial = {
        "loop_id": LOOP,
        "status": "running",
        "store": store.uri(f"loops/{LOOP}"),
        "iterations": [{"iteration": 1, "candidates": 9, "pairs": 2, "positive_share_raw": 0.4}],
    }
    out = tmp_path / "report"
    md = check_outputs(render_loop_report(partial, out, store=store), out)
    assert "Status: running" in md
    assert "Held-out evaluation: not available" in md and "Teacher shift: not available" in md
    assert "round 1: scores not available" in md  # no scores file yet
    empty = render_loop_report({"loop_id": LOOP}, tmp_path / "empty")
    assert "Per-round results: not available" in empty["md"].read_text() and empty["images"] == []


def test_load_summary_by_loop_id_path_and_uri(summary, store, tmp_path):
    ref = store.put_json(f"loops/{LOOP}/summary.json", summary)
    loaded, found = load_summary(LOOP, str(store.root))
    assert loaded["iterations"] == summary["iterations"] and found.root == store.root
    path = store.root / "loops" / LOOP / "summary.json"
    for source in (str(path), ref.uri):
        loaded, found = load_summary(source, "unused")
        assert loaded["loop_id"] == LOOP and found.root == store.root


def test_running_loop_summary_is_built_from_rounds(summary, store, tmp_path):
    store.put_jsonl(f"loops/{LOOP}/rounds.jsonl", summary["iterations"][:2])
    store.put_json(f"loops/{LOOP}/state.json", {"status": "running", "stages": {}})
    loaded, found = load_summary(LOOP, str(store.root))
    assert loaded["status"] == "running" and [r["iteration"] for r in loaded["iterations"]] == [1, 2]
    md = render_loop_report(loaded, tmp_path / "report", store=found)["md"].read_text()
    assert "Held-out evaluation: not available" in md and "influence_histograms.png" in md


def test_load_summary_errors_name_the_argument(store, tmp_path):
    with pytest.raises(NotFound) as err:
        load_summary("no-such-loop", str(store.root))
    assert err.value.field == "loop"
    with pytest.raises(NotFound) as err:
        load_summary(str(tmp_path / "missing" / "summary.json"), str(store.root))
    assert err.value.field == "summary"
    with pytest.raises(NotFound) as err:
        load_summary(LOOP, str(tmp_path / "no-store"))
    assert err.value.field == "artifacts" and not (tmp_path / "no-store").exists()
    bad = tmp_path / "bad.json"
    bad.write_text("[1, 2")
    with pytest.raises(InvalidArgument) as err:
        load_summary(str(bad), str(store.root))
    assert err.value.field == "summary"
    with pytest.raises(InvalidArgument) as err:
        load_summary("ftp://host/summary.json", str(store.root))
    assert err.value.field == "summary"


def test_experiment_report(summary, store, tmp_path):
    per_seed = {
        seed: {
            "comparisons": {
                "montessori_vs_self_instruct": comparison(-0.1 + 0.05 * seed, -0.2, 0.1 * seed),
                "montessori_vs_base": comparison(0.1, 0.0, 0.2),
                "null_sft_seed": comparison(0.0, -0.05, 0.05),
            },
            "teacher_shift": shift(),
            "dpo": [{"iteration": 1, "pairs": 9, "dpo_reward_margin": 0.2, "heldout_reward_accuracy": 0.6}],
        }
        for seed in (0, 1, 2)
    }
    experiment = {
        "experiment": "exp-1",
        "seeds": [0, 1, 2],
        "draws": 3,
        "loops": {str(s): {"loop_id": f"loop-{s}", "summary_uri": f"file:///x/{s}.json"} for s in (0, 1, 2)},
        "per_seed": {str(s): v for s, v in per_seed.items()},
        "pooled": {
            "comparisons": {
                "montessori_vs_self_instruct": comparison(-0.08, -0.12, -0.03),
                "montessori_vs_base": comparison(0.1, 0.05, 0.15),
                "null_sft_seed": comparison(0.0, -0.03, 0.03),
            },
            "per_category": {"math": {"montessori_vs_base": comparison(0.1, -0.1, 0.3)}},
            "teacher_shift": {"differences": shift()["differences"]},
        },
        "verdict": {
            "montessori_below_self_instruct_seeds": "2/3",
            "pooled_ci_excludes_zero": True,
            "both_below_base": False,
            "helpful_share_rises": True,
        },
    }
    out = tmp_path / "experiment"
    paths = render_experiment_report(json.loads(json.dumps(experiment)), out, summaries={"0": summary}, store=store)
    md = check_outputs(paths, out)
    names = {p.name for p in paths["images"]}
    assert {
        "forest.png",
        "teacher_shift_per_seed.png",
        "seed-0-influence_histograms.png",
        "seed-0-heldout.png",
    } <= names
    assert "Montessori's held-out loss is below Self-Instruct's in 2/3 seeds." in md
    assert "The pooled CI of Montessori − Self-Instruct excludes 0." in md
    assert "pooled Montessori − Self-Instruct: -0.08, CI [-0.12, -0.03]" in md
    dpo = section(md, "Teacher DPO per seed")
    assert len([line for line in dpo.splitlines() if line.startswith("| ")]) == 1 + 3
    assert "## Seed 0: loop loop-a (succeeded)" in md
    bare = render_experiment_report({"experiment": "empty"}, tmp_path / "bare")
    assert "Verdict: not available" in bare["md"].read_text() and bare["images"] == []
