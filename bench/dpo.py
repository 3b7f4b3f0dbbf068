"""Teacher DPO cost and what mixed precision changes, in one run per model: the trainer's own ``train_dpo``
(TRL DPOTrainer, LoRA r 8 on all linear layers) on the same pairs, once per ``--precisions`` entry.

The pairs are built from the seed data the way the loop builds them: the prompt is a real synthesis prompt
(completion style, ``--examples`` seed examples, ending in an open ``<instruction>`` tag), chosen and rejected are
two seed instructions closed by ``</instruction>``; ``--groups`` prompt groups, ``--pairs-per-group`` pairs each,
25% of the groups held out (the experiment's setting). Reported per precision: seconds per optimizer step, the
training margin and accuracy of the last step, and the held-out reward accuracy and margin, so a cheaper precision
is accepted only where those match fp32's.

Usage: python bench/dpo.py [--model models/smollm2-135m-instruct] [--precisions float32,bfloat16]
"""

from __future__ import annotations

import argparse
import json
import platform
import random
import tempfile
import time
from pathlib import Path

import torch

from common.envs import apply_offline_defaults
from common.jsonl import read_instruction_rows
from common.models import ModelRef
from services.teacher.prompts import pick_examples, seed_examples, synthesis_prompt
from services.trainer.config import DPOSettings
from services.trainer.dpo import train_dpo

REPO = Path(__file__).resolve().parents[1]


def pairs(groups: int, per_group: int, examples: int, seed: int = 0) -> list[dict]:
    seeds = seed_examples(read_instruction_rows(REPO / "data" / "seed.jsonl"))
    rng = random.Random(seed)
    out = []
    for group in range(groups):
        shown = pick_examples(seeds, [], total=examples, from_generated=0, rng=rng)
        prompt = synthesis_prompt(shown, style="completion")
        for _ in range(per_group):
            chosen, rejected = rng.sample(seeds, 2)
            out.append(
                {
                    "prompt": prompt,
                    "chosen": f"{chosen}</instruction>",
                    "rejected": f"{rejected}</instruction>",
                    "group_id": f"g{group}",
                }
            )
    return out


def main() -> None:
    apply_offline_defaults()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="models/smollm2-135m-instruct")
    parser.add_argument("--precisions", default="float32,bfloat16")
    parser.add_argument("--groups", type=int, default=8)
    parser.add_argument("--pairs-per-group", type=int, default=2)
    parser.add_argument("--examples", type=int, default=8, help="seed examples per synthesis prompt (paper: 8)")
    parser.add_argument("--epochs", type=float, default=3.0)
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    data = pairs(args.groups, args.pairs_per_group, args.examples)
    settings = dict(
        learning_rate=1e-4, epochs=args.epochs, batch_size=2, heldout_fraction=0.25, checkpoint_every=0, max_length=2048
    )
    runs = {}
    for precision in filter(None, args.precisions.split(",")):
        with tempfile.TemporaryDirectory() as tmp:
            started = time.perf_counter()
            result = train_dpo(
                ModelRef(args.model),
                data,
                DPOSettings(**settings, precision=precision),
                Path(tmp) / "adapter",
                seed=0,
                device="cpu",
            )
            seconds = time.perf_counter() - started
        runs[precision] = {
            "seconds": round(seconds, 1),
            "steps": result.steps,
            "seconds_per_step": round(seconds / max(result.steps, 1), 2),
            "reward_margin_last": round(result.reward_margin_last, 4),
            "reward_accuracy_last": result.reward_accuracy_last,
            "heldout_pairs": result.heldout_pairs,
            "heldout_reward_accuracy": result.heldout_reward_accuracy,
            "heldout_reward_margin": result.heldout_reward_margin,
        }
        print(f"{precision}: {runs[precision]}", flush=True)
    first = next(iter(runs.values()))
    for run in runs.values():
        run["speed_vs_first"] = round(first["seconds_per_step"] / run["seconds_per_step"], 2)
    results = {
        "model": args.model,
        "pairs": len(data),
        "groups": args.groups,
        "examples_per_prompt": args.examples,
        "epochs": args.epochs,
        "machine": f"{platform.machine()}, {torch.get_num_threads()} torch threads, torch {torch.__version__}, "
        f"CPU kernels {torch.backends.cpu.get_cpu_capability()}",
        "runs": runs,
    }
    out = Path(args.out or REPO / "bench" / "results" / f"dpo-{Path(args.model).name}.json")
    out.write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
