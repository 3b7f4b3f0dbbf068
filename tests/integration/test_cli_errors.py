"""Bad input: one line naming the field or file:line, exit code 2, no artifact left behind."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from cli.main import main
from tests.conftest import DATA, REPO


@pytest.fixture()
def tiny_args(tiny_models, tmp_path):
    teacher, student = tiny_models
    return [
        "--set",
        f"models.teacher={teacher}",
        "--set",
        f"models.student={student}",
        "--set",
        f"artifacts={tmp_path / 'art'}",
    ]


def run_cli(argv, capsys):
    code = main(argv)
    err = capsys.readouterr().err.strip().splitlines()
    return code, err[-1] if err else ""


def write(path, rows_or_text):
    path.write_text(
        rows_or_text if isinstance(rows_or_text, str) else "".join(json.dumps(r) + "\n" for r in rows_or_text)
    )
    return path


@pytest.mark.parametrize(
    "setting,message",
    [
        ("iterations=-1", "iterations: must be in 1..1000"),
        ("sizes.probe_prompt=3", "sizes.probe_prompt: unknown field"),
        ("synthesis.temperature=hot", "synthesis.temperature: expected a number"),
        ("models.teacher=", "models.teacher: must name a model folder"),
        (
            "models.student=/nonexistent/student",
            "models.student: no model folder (config.json) at /nonexistent/student",
        ),
        ("data.seed_path=/nonexistent.jsonl", "data.seed_path: /nonexistent.jsonl does not exist"),
    ],
)
def test_bad_config(tiny_args, tmp_path, capsys, setting, message):
    code, line = run_cli(["run", *tiny_args, "--set", setting], capsys)
    assert code == 2
    assert line == f"montessori: error: {message}" or (line.startswith("montessori: error: ") and message in line)
    assert not (tmp_path / "art").exists()


def test_bad_config_file(tiny_args, tmp_path, capsys):
    cfg = write(tmp_path / "c.yaml", "influence:\n  optimizer: adam\n")
    code, line = run_cli(["run", "--config", str(cfg), *tiny_args], capsys)
    assert code == 2 and "influence.optimizer: must be one of 'faithful', 'sgd'" in line


@pytest.mark.parametrize(
    "content,message",
    [
        ('{"instruction": "a", "input": "", "output": "b"}\n\n', ":2: empty line"),
        ('{"instruction": "a", "input": "", "output": "b"}\n{"instruction": "a",\n', ":2: malformed JSON"),
    ],
)
def test_bad_seed_file(tiny_args, tmp_path, capsys, content, message):
    seed = write(tmp_path / "seed.jsonl", content)
    code, line = run_cli(["run", *tiny_args, "--set", f"data.seed_path={seed}"], capsys)
    assert code == 2 and f"{seed}{message}" in line
    assert not (tmp_path / "art").exists()


def test_reference_row_longer_than_the_context_window(tiny_args, tmp_path, capsys):
    rows = [json.loads(line) for line in (DATA / "reference.jsonl").read_text().splitlines()[:3]]
    rows[2]["instruction"] = "Explain this. " * 300
    reference = write(tmp_path / "ref.jsonl", rows)
    code, line = run_cli(["run", *tiny_args, "--set", f"data.reference_path={reference}"], capsys)
    assert code == 2 and f"{reference}:3: instruction is" in line and "longer than the context window (512)" in line
    assert not (tmp_path / "art").exists()


def test_stage_command_rejects_an_over_long_candidate_without_writing(tiny_models, tmp_path, capsys):
    teacher, student = tiny_models
    candidates = write(
        tmp_path / "cands.jsonl",
        [
            {"id": "a", "group_id": "g", "instruction": "Name a colour.", "response": "Blue."},
            {"id": "b", "group_id": "g", "instruction": "word " * 1000, "response": "x"},
        ],
    )
    warm = tmp_path / "warm"
    assert (
        main(
            [
                "train-student",
                "--no-progress",
                "--warmup",
                "--candidates",
                str(candidates),
                "--out",
                str(warm),
                "--student",
                str(student),
                "--set",
                "warmup.max_length=64",
            ]
        )
        == 0
    )
    capsys.readouterr()
    code, line = run_cli(
        [
            "score",
            "--warmup",
            str(warm / "model"),
            "--candidates",
            str(candidates),
            "--out",
            str(tmp_path / "scores"),
            "--set",
            "influence.optimizer=faithful",
        ],
        capsys,
    )
    assert code == 2 and f"{candidates}:2: instruction is" in line
    assert not (tmp_path / "scores").exists()


def test_real_process_exit_code_and_single_line(tmp_path):
    out = subprocess.run(
        [sys.executable, "-m", "cli.main", "run", "--set", "models.teacher=/nope"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 2
    assert (
        out.stderr.strip().splitlines()[-1]
        == "montessori: error: models.teacher: no model folder (config.json) at /nope"
    )
    assert "Traceback" not in out.stderr
