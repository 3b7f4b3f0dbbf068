"""What an effect-experiment design costs on the machine the benches ran on: an estimate from measured rates.

Reads the design's sizes from its config and the per-unit costs measured on this machine from ``bench/results``:
the teacher's forward rate in tokens/s (``teacher-paths-<teacher>.json``: the n-fold and the once-per-prompt prefill
differ only by (n - 1) prefills of each prompt, so their time difference over those tokens is the rate; on a CPU
a batched decode token costs about as much as a prefill token, so every token the design feeds or samples is
charged at it), influence
seconds per candidate on the student (``influence-<student>-bf16.json``, else the fp32 run ``influence-<student>.json``:
first_order steady rate for the bulk, exact for the audit and the teacher shift, which scores exactly) and seconds
per DPO step of the teacher (``dpo-<teacher>.json``, scaled to the design's prompt length). Where the vLLM CPU
backend was timed on the teacher (``teacher-<teacher>-vllm.json``, ``bench/teacher.py``), the generation is also
costed on that path: the tokens the design samples at the merged version's measured tokens/s (an estimate, not a
bound: the bench's prompts are the synthesis prompts, the answers' prompts are shorter). Student SFT, warm-up and
evaluation are left out (small next to these, and not measured here). Teacher generation is a lower bound (every
sample kept); a rate measured under contention, or per DPO step with the model's load in it, errs the other way:
``NOTE`` in the output says which.

Usage: python bench/effect_cost.py [--config configs/effect-qwen.yaml]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]


#: How each stage's figure errs, for the rates committed in bench/results (say so again when a rate is re-measured).
NOTE = (
    "teacher generation: a lower bound (every sample kept, one torch thread); influence: rates of a run that shared "
    "the cores with another process (its file's note), slower than an uncontended run (docs/results.md section 2), "
    "so an upper bound; DPO: seconds per step of a short run including the model's load and held-out evaluation, "
    "scaled to the design's prompt length, so an upper bound; student SFT, warm-up and evaluation left out"
)

#: Tokens of an answer prompt (the teacher's chat template around one instruction), roughly.
ANSWER_PROMPT_TOKENS = 60


def prompt_tokens(config: dict) -> int:
    """Tokens of one synthesis prompt of the design (``examples_per_prompt`` seed examples), by the teacher's
    tokenizer, as ``bench/teacher.py`` builds them."""
    import random

    from transformers import AutoTokenizer

    from common.jsonl import read_instruction_rows
    from services.teacher.prompts import pick_examples, seed_examples, synthesis_prompt

    seeds = seed_examples(read_instruction_rows(REPO / "data" / "seed.jsonl"))
    total = config.get("synthesis", {}).get("examples_per_prompt", 8)
    shown = pick_examples(seeds, [], total=total, from_generated=0, rng=random.Random(0))
    tokenizer = AutoTokenizer.from_pretrained(REPO / config["models"]["teacher"])
    return len(tokenizer(synthesis_prompt(shown, style="completion"))["input_ids"])


def results(name: str) -> dict:
    return json.loads((REPO / "bench" / "results" / name).read_text())


def optional(name: str) -> dict | None:
    path = REPO / "bench" / "results" / name
    return json.loads(path.read_text()) if path.exists() else None


def row(results_file: dict, method: str) -> dict:
    return next(r for r in results_file["results"] if r["method"] == method)


def estimate(config: dict, *, keep_rate: float) -> dict:
    sizes, synthesis = config.get("sizes", {}), config.get("synthesis", {})
    evaluation, dpo, influence = config.get("evaluation", {}), config.get("dpo", {}), config.get("influence", {})
    teacher = Path(config["models"]["teacher"]).name
    student = Path(config["models"].get("student", "models/gemma-3-270m")).name
    n = synthesis.get("samples_per_prompt", 4)
    instruction_tokens = synthesis.get("max_new_tokens", 48)
    response_tokens = synthesis.get("response_max_new_tokens", 96)
    draws, shift = evaluation.get("draws", 3), evaluation.get("shift_samples", 0)
    probing = sizes["probe_prompts"] * n
    kept_probing = int(probing * keep_rate)
    training = 2 * draws * sizes["train_examples"] + sizes.get("warmup_examples", 16)
    fresh = 2 * shift
    samples = probing + (training + fresh) / keep_rate  # instruction samples drawn
    answered = kept_probing + training + fresh
    prompts = samples / n
    prompt_length = prompt_tokens(config)  # loads the teacher's tokenizer: once
    tokens = (
        prompts * prompt_length + samples * instruction_tokens + answered * (response_tokens + ANSWER_PROMPT_TOKENS)
    )

    bench = results(f"teacher-paths-{teacher}.json")
    paths = bench["runs"][0]
    repeated = bench["prompts"] * (bench["n"] - 1) * prompt_length
    gen = repeated / (paths["transformers (fp32), n-fold prefill"]["seconds"] - paths["transformers (fp32)"]["seconds"])
    stages = {"teacher generation": tokens / gen}
    rates: dict = {}
    missing = []
    scorer_file, scorer = next(
        (
            (name, found)
            for name in (f"influence-{student}-bf16.json", f"influence-{student}.json")
            if (found := optional(name))
        ),
        (None, None),
    )
    if scorer:
        exact = 1 / row(scorer, "(b) exact")["steady_cand_per_s"]
        first = 1 / row(scorer, "(c) first_order")["steady_cand_per_s"]
        bulk = exact if influence.get("mode", "exact") == "exact" else first
        stages["influence (probing, bulk)"] = kept_probing * bulk
        stages["influence (audit, exact)"] = min(influence.get("audit_size", 0), kept_probing) * exact
        stages["influence (teacher shift, exact)"] = fresh * exact
        rates.update(
            exact_seconds_per_candidate=round(exact, 2),
            first_order_seconds_per_candidate=round(first, 2),
            influence_bench=scorer_file,
        )
    else:
        missing.append(f"influence-{student}.json (influence scoring)")
    dpo_run = optional(f"dpo-{teacher}.json")
    pairs = max(50, kept_probing // 4)  # at least the 50 pairs
    steps = pairs * (1 - dpo.get("heldout_fraction", 0.0)) * dpo.get("epochs", 1) / dpo.get("batch_size", 2)
    if dpo_run:
        step = dpo_run["runs"]["float32"]["seconds_per_step"]
        # The bench's prompts held --examples seed examples; a step's cost grows with the tokens it trains on.
        scale = (synthesis.get("examples_per_prompt", 8) + 1) / (dpo_run["examples_per_prompt"] + 1)
        stages["teacher DPO"] = steps * step * scale
        rates.update(dpo_seconds_per_step_bench=step, dpo_prompt_scale=round(scale, 2))
    else:
        missing.append(f"dpo-{teacher}.json (teacher DPO)")
    sampled = samples * instruction_tokens + answered * response_tokens
    alternatives = {}
    served = optional(f"teacher-{teacher}-vllm.json")
    if served:
        merged = next(name for name in served["summary"] if "merged version" in name)
        rate = served["summary"][merged]["tokens_per_second"]["median"]
        alternatives["teacher generation, vLLM merged version (estimate)"] = {
            "sampled_tokens": round(sampled),
            "tokens_per_second": rate,
            "bench_device": served["device"],
            "hours": round(sampled / rate / 3600, 2),
            "total_hours_with_it": round(
                (sum(stages.values()) - stages["teacher generation"] + sampled / rate) / 3600, 1
            ),
        }
    return {
        "design": {
            "probing_samples": probing,
            "probing_candidates": kept_probing,
            "training_examples": training,
            "shift_examples": fresh,
            "teacher_forward_tokens": round(tokens),
            "dpo_steps": round(steps, 1),
            "keep_rate": keep_rate,
        },
        "rates": {
            "teacher_forward_tokens_per_second": round(gen, 2),
            "synthesis_prompt_tokens": prompt_length,
            "teacher_bench_device": bench["device"],
            **rates,
        },
        "not_measured_so_left_out": missing,
        "hours": {name: round(seconds / 3600, 2) for name, seconds in stages.items()},
        "total_hours": round(sum(stages.values()) / 3600, 1),
        "note": NOTE,
        "other_paths": alternatives,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default=str(REPO / "configs" / "effect-qwen.yaml"))
    parser.add_argument(
        "--keep-rate", type=float, default=1.0, help="share of samples the filters keep (1.0: a lower bound)"
    )
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    config = yaml.safe_load(Path(args.config).read_text())
    report = {"config": Path(args.config).name, **estimate(config, keep_rate=args.keep_rate)}
    out = Path(args.out or REPO / "bench" / "results" / f"cost-{Path(args.config).stem}.json")
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
