"""The judge end to end on the tiny models: students answer held-out rows, a local judge compares them, the CLI."""

from __future__ import annotations

import argparse
import json

import pytest

from cli.judge import add_parser, judge_students, run
from common.errors import InvalidArgument, NotFound
from evaluation.judge import Judge, JudgeSettings, judge_pair
from tests.conftest import DATA

EVAL = DATA / "eval.jsonl"


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="montessori")
    add_parser(parser.add_subparsers(dest="command", required=True))
    return parser.parse_args(["judge", *argv])


class AlwaysFirstJudge(Judge):
    """A symmetric scripted judge: it prefers whichever response is shown first, whatever it says."""

    def complete(self, user_texts, *, max_new_tokens):
        return ["1"] * len(user_texts)

    def describe(self):
        return {"kind": "scripted"}


def test_a_student_against_itself_with_the_tiny_local_judge_scores_one_half(tiny_teacher, tiny_student):
    settings = JudgeSettings(model=str(tiny_teacher), max_rows=3, max_new_tokens=16, verdict_max_new_tokens=4)
    result = judge_students(tiny_student, tiny_student, EVAL, settings)

    assert result["n"] == 3 and len(result["rows"]) == 3
    assert [r["index"] for r in result["rows"]] == [0, 26, 53]  # spread over the category-ordered file
    assert result["wins"] + result["ties"] + result["losses"] == 3
    assert 0.0 <= result["interval"]["ci_low"] <= result["win_rate"] <= result["interval"]["ci_high"] <= 1.0
    assert set(result["categories"]) == {"writing", "coding", "classification"}
    assert result["judge"] == {"kind": "local", "model": str(tiny_teacher)}
    for record in result["rows"]:
        assert record["verdict_a_first"] in ("first", "second", "tie", "unparseable")
        # greedy answers from one folder are identical, so both orders show the judge the same prompt
        assert record["answer_a"] == record["answer_b"]
        assert record["judge_output_a_first"] == record["judge_output_b_first"]
    # whatever a deterministic judge says about two identical answers, the two orders cancel
    assert result["win_rate"] == 0.5

    rows = [json.loads(line) for line in EVAL.read_text().splitlines()]
    picked = [rows[r["index"]] for r in result["rows"]]
    scripted = judge_pair(
        picked,
        [r["answer_a"] for r in result["rows"]],
        [r["answer_b"] for r in result["rows"]],
        AlwaysFirstJudge(),
        settings,
    )
    assert scripted["win_rate"] == 0.5 and scripted["agreement"] == 0.0 and scripted["ties"] == 3


def test_the_judge_command_prints_the_summary_and_writes_the_rows(tiny_teacher, tiny_student, tmp_path, capsys):
    out = tmp_path / "judge" / "result.json"
    args = parse(
        [
            "--a",
            str(tiny_student),
            "--b",
            str(tiny_student),
            "--judge-model",
            str(tiny_teacher),
            "--rows",
            str(EVAL),
            "--max-rows",
            "2",
            "--max-new-tokens",
            "8",
            "--out",
            str(out),
        ]
    )

    assert run(args) == 0

    summary = json.loads(capsys.readouterr().out)
    written = json.loads(out.read_text())
    assert "rows" not in summary and len(written["rows"]) == 2
    assert summary["win_rate"] == written["win_rate"] == 0.5
    assert summary["settings"]["max_rows"] == 2 and summary["out"] == str(out)
    assert not list(out.parent.glob("*.tmp"))


@pytest.mark.parametrize(
    "argv, error, flag",
    [
        (["--judge-endpoint", "http://127.0.0.1:8000/v1"], InvalidArgument, "--judge-endpoint-model"),
        (["--judge-endpoint", "127.0.0.1:8000", "--judge-endpoint-model", "m"], InvalidArgument, "--judge-endpoint"),
        (["--judge-model", "{teacher}", "--max-rows", "-1"], InvalidArgument, "--max-rows"),
        (["--judge-model", "{teacher}", "--max-new-tokens", "0"], InvalidArgument, "--max-new-tokens"),
        (["--judge-model", "{missing}"], NotFound, "--judge-model"),
        (["--judge-model", "{teacher}", "--rows", "{missing}/eval.jsonl"], NotFound, "--rows"),
    ],
)
def test_bad_judge_flags_name_the_flag(tiny_teacher, tiny_student, tmp_path, argv, error, flag):
    argv = [a.format(teacher=tiny_teacher, missing=tmp_path / "missing") for a in argv]
    args = parse(
        ["--a", str(tiny_student), "--b", str(tiny_student), "--max-rows", "1", "--max-new-tokens", "4", *argv]
    )
    with pytest.raises(error) as err:
        run(args)
    assert err.value.field == flag


def test_a_missing_student_folder_names_its_flag(tiny_teacher, tmp_path):
    args = parse(["--a", str(tmp_path / "nope"), "--b", str(tmp_path), "--judge-model", str(tiny_teacher)])
    with pytest.raises(NotFound) as err:
        run(args)
    assert err.value.field == "--a"
