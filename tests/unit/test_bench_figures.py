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


def test_the_merged_serving_figures_are_the_committed_runs():
    """The AVX2 machine's table (docs/benchmarks.md) and the README's merged-serving ratios, recomputed from
    the run's tokens/s against the teacher service's transformers path."""
    run = json.loads((REPO / "bench/results/teacher-smollm2-135m-instruct-epyc-avx2.json").read_text())["runs"][0]
    rate = {name: row["tokens_per_second"] for name, row in run.items()}
    service = rate["transformers (fp32)"]
    docs = (REPO / "docs" / "benchmarks.md").read_text()
    readme = (REPO / "README.md").read_text()
    merged, adapter = rate["vLLM (fp32), merged version, same batches"], rate["vLLM (fp32) + r=8 adapter, same batches"]
    for name in ("vLLM (fp32), same batches", "vLLM (fp32), one request"):
        assert f"| {rate[name]} | {rate[name] / service:.2f} |" in docs, name
    assert f"| **{merged}** | **{merged / service:.2f}** |" in docs
    assert f"| {adapter} | {adapter / service:.2f} |" in docs
    for text in (docs, readme):
        assert f"{merged / adapter:.2f}× the adapter" in text or f"{merged / adapter:.2f}× (" in text
        assert f"{merged / service:.2f}× transformers" in text or f"{merged / service:.2f}× the transformers" in text
