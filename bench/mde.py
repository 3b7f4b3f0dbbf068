"""Minimum detectable effect of an effect-experiment design, from the null spreads a finished run measured.

A difference between two students trained on two draws of the SAME arm (``null_data_draw``) or on one draw with
another SFT seed (``null_sft_seed``) is what a Montessori - Self-Instruct difference is when the method does
nothing; its per-unit values (one per draw, on the same held-out rows) give the spread ``s`` of one unit. A design
with ``D`` paired draws per arm averages ``D`` units, so its standard error is ``s / sqrt(D)`` and the smallest
true difference it detects at two-sided alpha 0.05 with power 0.8 is ``(1.96 + 0.84) * s / sqrt(D)``. The teacher
shift's interval half-width scales with ``1 / sqrt(samples)`` the same way. Both are rough where few null units
were measured (``null_units`` says how many).

Usage: python bench/mde.py [--from bench/results/effect-smollm2-teacher.json] [--draws 3] [--shift-samples 200]
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
Z = 1.96 + 0.8416  # two-sided alpha 0.05, power 0.8


def null_units(result: dict) -> list[float]:
    comparisons = result["pooled"]["comparisons"]
    return [v for name in ("null_data_draw", "null_sft_seed") for v in comparisons.get(name, {}).get("per_unit", [])]


def shift_standard_error(result: dict) -> tuple[float, int] | None:
    """The measured standard error of the teacher shift's mean-influence difference, and its samples."""
    for seed in result["per_seed"].values():
        shift = seed.get("teacher_shift") or {}
        for diff in shift.get("differences", []):
            return (diff["ci_high"] - diff["ci_low"]) / (2 * 1.96), int(shift["samples"])
    return None


def design(result: dict, draws: int, shift_samples: int) -> dict:
    units = null_units(result)
    spread = math.sqrt(sum(v * v for v in units) / len(units))  # the null's mean is 0 by construction
    out = {
        "null_units": len(units),
        "null_unit_values": [round(v, 4) for v in units],
        "unit_spread": round(spread, 4),
        "draws_per_arm": draws,
        "heldout_loss_mde": round(Z * spread / math.sqrt(draws), 4),
        "heldout_loss_mde_by_draws": {d: round(Z * spread / math.sqrt(d), 4) for d in (1, 2, 3, 5, 8)},
    }
    measured = shift_standard_error(result)
    if measured is not None:
        error, samples = measured
        scaled = error * math.sqrt(samples / shift_samples)
        out.update(
            shift_measured_samples=samples,
            shift_samples=shift_samples,
            shift_mean_influence_mde=round(Z * scaled, 5),
        )
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--from", dest="source", default=str(REPO / "bench/results/effect-smollm2-teacher.json"))
    parser.add_argument("--draws", type=int, default=3)
    parser.add_argument("--shift-samples", type=int, default=200)
    parser.add_argument("--out", default=str(REPO / "bench/results/effect-mde.json"))
    args = parser.parse_args()
    result = json.loads(Path(args.source).read_text())
    report = {"source": Path(args.source).name, **design(result, args.draws, args.shift_samples)}
    Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
