"""Published benchmark figures come from the committed results: the teacher table in docs/benchmarks.md is what
`bench/teacher.py --markdown` prints from bench/results, and the README quotes the same medians."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
TEACHER = [
    "bench/results/teacher-smollm2-135m-instruct.json",
    "bench/results/teacher-smollm2-135m-instruct-avx2.json",
]


def test_the_teacher_table_and_the_readme_match_the_committed_runs():
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    table = subprocess.run(
        [sys.executable, "bench/teacher.py", "--markdown", *TEACHER],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    assert table in (REPO / "docs" / "benchmarks.md").read_text()
    summary = json.loads((REPO / TEACHER[0]).read_text())["summary"]
    readme = (REPO / "README.md").read_text()
    for row in ("vLLM (bf16), same batches", "vLLM (bf16), one request", "vLLM (bf16) + r=8 adapter, same batches"):
        assert f"{summary[row]['ratio']['median']:.2f}" in readme, row
