"""Influence scoring speed, in one run on the same student, reference set and candidates:

  (a) official-style: the official code's cost structure: warm-up weights and AdamW state
      reloaded from disk before every candidate, reference rows one at a time padded to 1024 tokens;
  (b) exact: this project's scorer (state restored in memory, length-sorted padded-to-longest batches);
  (c) first_order: the first-order Taylor estimate (one backward per candidate, no reference pass);
  (d) projected: not implemented yet (reported as such).

Prints a table (candidates/s, ratio to (a), agreement with (b)) and writes JSON.
Usage: python bench/influence.py --student models/tiny-student [--candidates 24] [--reference 16]
"""
from __future__ import annotations

import argparse
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
from services.influence.config import InfluenceConfig
from services.influence.optimizer_state import load_adamw
from services.influence.scoring import InfluenceScorer, collate, examples_from_rows, pair_agreement, spearman
from services.trainer.config import SFTSettings
from services.trainer.sft import train_sft

OFFICIAL_PAD = 1024


def official_style(warmup: Path, tokenizer, reference, candidates, max_length: int) -> list[float]:
    """Per candidate: reload from disk, one step, then the reference loss row by row padded to 1024."""
    def padded(example):
        encoded = scorer_encode(tokenizer, example, max_length)
        batch = collate([encoded], tokenizer.pad_token_id)
        extra = OFFICIAL_PAD - batch["input_ids"].shape[1]
        if extra > 0:
            batch = {"input_ids": torch.nn.functional.pad(batch["input_ids"], (0, extra), value=tokenizer.pad_token_id),
                     "attention_mask": torch.nn.functional.pad(batch["attention_mask"], (0, extra), value=0),
                     "labels": torch.nn.functional.pad(batch["labels"], (0, extra), value=IGNORE_INDEX)}
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


def main() -> None:
    apply_offline_defaults()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--student", default="models/tiny-student")
    parser.add_argument("--candidates", type=int, default=24)
    parser.add_argument("--official-candidates", type=int, default=None, help="candidates for (a) (default: all)")
    parser.add_argument("--reference", type=int, default=16)
    parser.add_argument("--lr", type=float, default=5e-6, help="warm-up learning rate (the influence step's lr)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    seed = read_instruction_rows("data/seed.jsonl")
    reference_rows = read_instruction_rows("data/reference.jsonl")[: args.reference]
    candidates = examples_from_rows(seed[-args.candidates:], prefix="cand")
    with tempfile.TemporaryDirectory() as tmp:
        warmup = Path(tmp) / "warmup"
        train_sft(ModelRef(args.student), [(instruction_text(r["instruction"], r["input"]), r["output"]) for r in seed[:8]],
                  SFTSettings(learning_rate=args.lr, batch_size=4), warmup, seed=0, save_optimizer=True)
        tokenizer = load_tokenizer(warmup, field="warmup")
        reference = examples_from_rows(reference_rows, prefix="ref")
        config = InfluenceConfig(optimizer="faithful", reference_batch_size=16)
        model = load_model(ModelRef(str(warmup)), field="warmup", trainable=True)
        scorer = InfluenceScorer(model, tokenizer, reference, config, load_adamw(model, warmup))
        official_n = args.official_candidates or len(candidates)
        official, t_official = timed(lambda: official_style(warmup, tokenizer, reference, candidates[:official_n], scorer.max_length))
        exact, t_exact = timed(lambda: [r["influence"] for r in scorer.score(candidates, mode="exact")])
        first, t_first = timed(lambda: [r["influence"] for r in scorer.score(candidates, mode="first_order")])
    rate = lambda n, t: n / t  # noqa: E731
    base_rate = rate(official_n, t_official)
    groups = [f"g{i // 4}" for i in range(len(candidates))]
    rows = [
        {"method": "(a) official-style", "candidates": official_n, "seconds": t_official, "cand_per_s": base_rate,
         "speedup": 1.0, "spearman_vs_exact": spearman(exact[:official_n], official),
         "pair_agreement_vs_exact": pair_agreement(groups[:official_n], exact[:official_n], official)},
        {"method": "(b) exact", "candidates": len(candidates), "seconds": t_exact, "cand_per_s": rate(len(candidates), t_exact),
         "speedup": rate(len(candidates), t_exact) / base_rate, "spearman_vs_exact": 1.0, "pair_agreement_vs_exact": 1.0},
        {"method": "(c) first_order", "candidates": len(candidates), "seconds": t_first, "cand_per_s": rate(len(candidates), t_first),
         "speedup": rate(len(candidates), t_first) / base_rate, "spearman_vs_exact": spearman(exact, first),
         "pair_agreement_vs_exact": pair_agreement(groups, exact, first)},
        {"method": "(d) projected", "candidates": 0, "seconds": None, "cand_per_s": None, "speedup": None,
         "spearman_vs_exact": None, "pair_agreement_vs_exact": None, "note": "not implemented"},
    ]
    print(f"student={args.student} reference_rows={len(reference)} candidates={len(candidates)} threads={args.threads} "
          f"cpu={platform.processor() or platform.machine()}")
    print(f"{'method':<20} {'cand':>5} {'seconds':>9} {'cand/s':>9} {'x (a)':>8} {'spearman':>9} {'pairs':>6}")
    for r in rows:
        if r["seconds"] is None:
            print(f"{r['method']:<20} {'-':>5} {'-':>9} {'-':>9} {'-':>8} {'-':>9} {'-':>6}  {r['note']}")
            continue
        print(f"{r['method']:<20} {r['candidates']:>5} {r['seconds']:>9.2f} {r['cand_per_s']:>9.3f} {r['speedup']:>8.1f} "
              f"{r['spearman_vs_exact']:>9.3f} {r['pair_agreement_vs_exact']:>6.2f}")
    out = Path(args.out or f"bench/results/influence-{Path(args.student).name}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"student": args.student, "reference_rows": len(reference), "threads": args.threads,
                               "results": rows}, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
