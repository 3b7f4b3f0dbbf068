"""The effect, measured: `montessori experiment` with the committed configuration, results kept in the repo.

Runs one loop per seed (configs/effect.yaml: Montessori, Self-Instruct and base students, 3 data draws per arm,
teacher shift), then copies ``experiment.json`` to ``bench/results/<config name>.json`` (``effect.json`` for
``configs/effect.yaml``) and renders the report (markdown, html, plots) into ``docs/results/`` (``docs/results/<config
name>/`` for another config). A rerun resumes: finished seeds are read back from the store.
Usage: python bench/effect.py [--seeds 0,1,2] [--config configs/effect.yaml] [--set key=value ...]
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from cli.main import main as montessori  # noqa: E402


def run() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default=str(REPO / "configs" / "effect.yaml"))
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--set", action="append", default=[])
    parser.add_argument("--report", default=None, help="report folder (default: see above)")
    parser.add_argument("--result", default=None, help="results file (default: see above)")
    args = parser.parse_args()
    name = Path(args.config).stem
    args.report = args.report or str(REPO / "docs" / "results" / ("" if name == "effect" else name))
    args.result = args.result or str(REPO / "bench" / "results" / f"{name}.json")
    argv = ["experiment", "--config", args.config, "--seeds", args.seeds, "--out", args.report, "--no-progress"]
    for item in args.set:
        argv += ["--set", item]
    code = montessori(argv)
    if code == 0:
        shutil.copyfile(Path(args.report) / "experiment.json", args.result)
        print(f"results: {args.result}; report: {Path(args.report) / 'report.md'}")
    return code


if __name__ == "__main__":
    sys.exit(run())
