"""Influence scoring speed, in one run on the same student, reference set and candidates:

  (a) official-style: the official code's cost structure: warm-up weights and AdamW state
      reloaded from disk before every candidate, reference rows one at a time padded to 1024 tokens;
  (b) exact: this project's scorer (state restored in memory, length-sorted padded-to-longest batches);
  (c) first_order: the first-order Taylor estimate (one backward per candidate, no reference pass);
  (d) projected: the same estimate through a count sketch of k numbers, for each k of --projection-dims
      (the update is projected tensor by tensor during the backward pass; the reference gradient kept
      projected);
  (e), (f) with --bf16: (b) and (c) with ``compute_dtype: bfloat16`` (forward and backward under bf16 autocast,
      fp32 weights, optimizer state and step), compared with (b) in fp32.

(b)-(d) score the centred faithful influence (the default; (a) the official raw score, compared with (b)'s raw
scores) and pay a once-per-student-version setup (the reference loss L0, which every mode reports, plus the
reference gradient or its projection), reported apart: "cand/s" includes it, "steady cand/s" is the
per-candidate rate that a large round tends to.
A second table times candidate batching (optimizer 'sgd'; exact: one vmapped reference pass for
--batch stepped candidates; first_order/projected: --batch candidates per forward-mode pass)
against one candidate at a time.

Prints the tables (candidates/s, ratio to (a), agreement with (b)) and writes JSON.
Usage: python bench/influence.py --student models/tiny-student [--candidates 24] [--reference 16]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import platform
import tempfile
import time
from pathlib import Path

import torch

from common.chat import IGNORE_INDEX, instruction_text
from common.envs import apply_offline_defaults
from common.jsonl import read_instruction_rows
from common.models import ModelRef, load_model, load_tokenizer
from common.optimizer_state import load_adamw
from services.influence.agreement import pair_agreement, spearman
from services.influence.config import InfluenceConfig
from services.influence.scoring import InfluenceScorer, collate, examples_from_rows
from services.trainer.config import WarmupSettings
from services.trainer.sft import train_sft

OFFICIAL_PAD = 1024


def official_style(warmup: Path, tokenizer, reference, candidates, max_length: int) -> list[float]:
    """Per candidate: reload from disk, one step, then the reference loss row by row padded to 1024."""

    def padded(example):
        encoded = scorer_encode(tokenizer, example, max_length)
        batch = collate([encoded], tokenizer.pad_token_id)
        extra = OFFICIAL_PAD - batch["input_ids"].shape[1]
        if extra > 0:
            batch = {
                "input_ids": torch.nn.functional.pad(batch["input_ids"], (0, extra), value=tokenizer.pad_token_id),
                "attention_mask": torch.nn.functional.pad(batch["attention_mask"], (0, extra), value=0),
                "labels": torch.nn.functional.pad(batch["labels"], (0, extra), value=IGNORE_INDEX),
            }
        return batch

    reference_batches = [padded(r) for r in reference]

    def reference_loss(model) -> float:
        with torch.no_grad():
            return float(torch.stack([model(**b).loss for b in reference_batches]).mean())

    scores = []
    base = None
    for candidate in candidates:
        model = load_model(ModelRef(str(warmup)), field="warmup", trainable=True)  # reloaded from disk every time
        optimizer = load_adamw(model, warmup)
        if base is None:
            base = reference_loss(model)
        model(**collate([scorer_encode(tokenizer, candidate, max_length)], tokenizer.pad_token_id)).loss.backward()
        optimizer.step()
        scores.append(base - reference_loss(model))
    return scores


def scorer_encode(tokenizer, example, max_length):
    from common.chat import encode_example

    return encode_example(tokenizer, example.user_text, example.response, max_length=max_length, where=example.id)


def timed(fn):
    start = time.perf_counter()
    result = fn()
    return result, time.perf_counter() - start


def influences(scorer: InfluenceScorer, candidates, mode: str) -> list[float]:
    return [r["influence"] for r in scorer.score(candidates, mode=mode)]


def pair_count(groups: list[str], values: list[float]) -> int:
    """Preference pairs the method's rule makes from ``values`` (pair agreement is vacuous, 1.0, without any)."""
    return sum(
        1 for i, gi in enumerate(groups) for j, gj in enumerate(groups) if gi == gj and values[i] > 0 > values[j]
    )


def method_row(method: str, n: int, setup: float, seconds: float, base_rate: float, exact, values, groups) -> dict:
    """One row of the main table; ``seconds`` excludes ``setup``."""
    total = setup + seconds
    return {
        "method": method,
        "candidates": n,
        "pairs": pair_count(groups[:n], values),
        "setup_seconds": setup,
        "seconds": total,
        "cand_per_s": n / total,
        "speedup": n / total / base_rate,
        "steady_cand_per_s": n / seconds,
        "steady_speedup": n / seconds / base_rate,
        "spearman_vs_exact": spearman(exact[:n], values),
        "pair_agreement_vs_exact": pair_agreement(groups[:n], exact[:n], values),
    }


def main() -> None:
    apply_offline_defaults()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--student", default="models/tiny-student")
    parser.add_argument("--candidates", type=int, default=24)
    parser.add_argument("--official-candidates", type=int, default=None, help="candidates for (a) (default: all)")
    parser.add_argument("--reference", type=int, default=16)
    parser.add_argument("--lr", type=float, default=5e-6, help="warm-up learning rate (the influence step's lr)")
    parser.add_argument(
        "--projection-dims", type=int, nargs="*", default=[4096, 16384, 65536], help="(d)'s projection_dim values"
    )
    parser.add_argument(
        "--batch", type=int, default=8, help="candidate_batch_size of the batching table (0: skip that table)"
    )
    parser.add_argument(
        "--bf16", action="store_true", help="also (e) exact and (f) first_order with compute_dtype bfloat16"
    )
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    seed = read_instruction_rows("data/seed.jsonl")
    reference_rows = read_instruction_rows("data/reference.jsonl")[: args.reference]
    candidates = examples_from_rows(seed[-args.candidates :], prefix="cand")
    groups = [f"g{i // 4}" for i in range(len(candidates))]
    with tempfile.TemporaryDirectory() as tmp:
        warmup = Path(tmp) / "warmup"
        train_sft(
            ModelRef(args.student),
            [(instruction_text(r["instruction"], r["input"]), r["output"]) for r in seed[:8]],
            WarmupSettings(learning_rate=args.lr, batch_size=4, gradient_accumulation_steps=1, lr_scheduler="constant"),
            warmup,
            seed=0,
            save_optimizer=True,
        )
        tokenizer = load_tokenizer(warmup, field="warmup")
        reference = examples_from_rows(reference_rows, prefix="ref")
        config = InfluenceConfig(optimizer="faithful", reference_batch_size=16)
        model = load_model(ModelRef(str(warmup)), field="warmup", trainable=True)
        optimizer = load_adamw(model, warmup)
        scorer, t_base = timed(lambda: InfluenceScorer(model, tokenizer, reference, config, optimizer))  # snapshot + L0
        official_n = args.official_candidates or len(candidates)
        official, t_official = timed(
            lambda: official_style(warmup, tokenizer, reference, candidates[:official_n], scorer.max_length)
        )
        base_rate = official_n / t_official
        print(f"(a) official-style: {official_n} candidates in {t_official:.1f} s", flush=True)
        exact_rows, t_exact = timed(lambda: scorer.score(candidates, mode="exact"))
        exact = [r["influence_centred"] for r in exact_rows]
        exact_raw = [r["influence_raw"] for r in exact_rows]
        print(f"(b) exact: {len(candidates)} candidates in {t_exact:.1f} s (setup {t_base:.1f} s)", flush=True)
        signs = {
            "shared_step_influence": scorer.shared_step_influence,
            "positive_raw": sum(v > 0 for v in exact_raw),
            "positive_centred": sum(v > 0 for v in exact),
            "pairs_raw": pair_count(groups, exact_raw),
            "pairs_centred": pair_count(groups, exact),
        }
        _, t_setup_first = timed(scorer.reference_gradient)
        first, t_first = timed(lambda: influences(scorer, candidates, "first_order"))
        # (a) computes the official raw score: it is compared with (b)'s raw scores, the rest with (b)'s centred ones.
        rows = [
            method_row("(a) official-style (raw)", official_n, 0.0, t_official, base_rate, exact_raw, official, groups),
            method_row("(b) exact", len(candidates), t_base, t_exact, base_rate, exact, exact, groups),
            method_row(
                "(c) first_order", len(candidates), t_base + t_setup_first, t_first, base_rate, exact, first, groups
            ),
        ]
        if args.bf16:
            # Same model and optimizer state; its own L0 (and shared step) in bf16, timed as its setup.
            half_config = dataclasses.replace(config, compute_dtype="bfloat16")
            half, t_half_base = timed(lambda: InfluenceScorer(model, tokenizer, reference, half_config, optimizer))
            half_exact, t_half_exact = timed(lambda: influences(half, candidates, "exact"))
            _, t_half_setup = timed(half.reference_gradient)
            half_first, t_half_first = timed(lambda: influences(half, candidates, "first_order"))
            rows += [
                method_row(
                    "(e) exact bf16", len(candidates), t_half_base, t_half_exact, base_rate, exact, half_exact, groups
                ),
                method_row(
                    "(f) first_order bf16",
                    len(candidates),
                    t_half_base + t_half_setup,
                    t_half_first,
                    base_rate,
                    exact,
                    half_first,
                    groups,
                ),
            ]
            del half
        for dim in args.projection_dims:
            # A scorer per k on the same model (its L0 is the one timed above, t_base).
            projector = InfluenceScorer(
                model, tokenizer, reference, dataclasses.replace(config, projection_dim=dim), optimizer
            )
            _, t_setup = timed(projector.projected_reference)
            projected, t_projected = timed(lambda projector=projector: influences(projector, candidates, "projected"))
            rows.append(
                method_row(
                    f"(d) projected k={dim}",
                    len(candidates),
                    t_base + t_setup,
                    t_projected,
                    base_rate,
                    exact,
                    projected,
                    groups,
                )
            )
            del projector

        # Batching (optimizer 'sgd'): one candidate at a time vs --batch candidates per pass,
        # on one scorer (its setup is shared; only the batch size changes between runs).
        sgd = InfluenceScorer(model, tokenizer, reference, dataclasses.replace(config, optimizer="sgd"))
        sgd.reference_gradient()
        sgd.projected_reference()
        batching = []
        for mode in ("exact", "first_order", "projected") if args.batch > 1 else ():
            runs = {}
            for size in (1, args.batch):
                sgd.config = dataclasses.replace(sgd.config, candidate_batch_size=size)
                runs[size] = timed(lambda mode=mode: influences(sgd, candidates, mode))
            (one, t_one), (many, t_many) = runs[1], runs[args.batch]
            batching.append(
                {
                    "mode": mode,
                    "candidates": len(candidates),
                    "batch": args.batch,
                    "per_candidate_cand_per_s": len(candidates) / t_one,
                    "batched_cand_per_s": len(candidates) / t_many,
                    "speedup": t_one / t_many,
                    "max_relative_difference": max(abs(a - b) for a, b in zip(one, many)) / max(map(abs, one)),
                }
            )
    parameters = sum(p.numel() for p in scorer.params)
    print(
        f"student={args.student} parameters={parameters} reference_rows={len(reference)} "
        f"candidates={len(candidates)} threads={args.threads} cpu={platform.processor() or platform.machine()}"
    )
    print(
        f"{'method':<26} {'cand':>5} {'#pairs':>6} {'setup s':>8} {'seconds':>9} {'cand/s':>9} {'x (a)':>7} "
        f"{'steady/s':>9} {'x (a)':>7} {'spearman':>9} {'pair agr':>8}"
    )
    for r in rows:
        print(
            f"{r['method']:<26} {r['candidates']:>5} {r['pairs']:>6} {r['setup_seconds']:>8.2f} {r['seconds']:>9.2f} "
            f"{r['cand_per_s']:>9.3f} {r['speedup']:>7.1f} {r['steady_cand_per_s']:>9.3f} {r['steady_speedup']:>7.1f} "
            f"{r['spearman_vs_exact']:>9.3f} {r['pair_agreement_vs_exact']:>8.2f}"
        )
    print(
        f"faithful exact scores: shared zero-gradient step {signs['shared_step_influence']:.3e}; positive "
        f"{signs['positive_raw']}/{len(candidates)} raw, {signs['positive_centred']}/{len(candidates)} centred; pairs "
        f"{signs['pairs_raw']} raw, {signs['pairs_centred']} centred"
    )
    print(f"batching (optimizer sgd, projection_dim {config.projection_dim})")
    print(
        f"{'mode':<26} {'cand':>5} {'batch':>5} {'1/backward':>11} {'batched':>9} {'speedup':>8} {'max rel diff':>13}"
    )
    for b in batching:
        print(
            f"{b['mode']:<26} {b['candidates']:>5} {b['batch']:>5} {b['per_candidate_cand_per_s']:>11.3f} "
            f"{b['batched_cand_per_s']:>9.3f} {b['speedup']:>8.2f} {b['max_relative_difference']:>13.1e}"
        )
    out = Path(args.out or f"bench/results/influence-{Path(args.student).name}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(
        json.dumps(
            {
                "student": args.student,
                "parameters": parameters,
                "reference_rows": len(reference),
                "threads": args.threads,
                "results": rows,
                "signs": signs,
                "batching": batching,
            },
            indent=2,
        )
    )
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
