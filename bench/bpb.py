"""Is the teacher stronger than the student? Bits per UTF-8 byte of human-written answers, per model.

Each model reads every held-out row's instruction through the template it is used with in the loop (a teacher
through its own chat template, as the teacher service answers; the base student through the project's plain
template, as it is trained and evaluated) and is scored on the human answer's tokens only (no end-of-turn
token: the end markers differ between models, the answer text does not). bits per byte = summed negative
log-likelihood in bits / UTF-8 bytes of the answers, so models with different tokenizers compare. Each row
also gets a per-category figure. The first ``--check-rows`` rows are scored again in ``--check-dtype`` (bf16 by
default) to check that it changes nothing that matters, and that pass is timed against the same rows in the main
dtype (bf16 pays only on CPUs that compute it natively: AVX512-BF16/AMX, recent GPUs).

Usage: python bench/bpb.py [--models models/qwen2.5-coder-1.5b-instruct,models/gemma-3-270m,...]
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import time
from collections import defaultdict
from pathlib import Path

import torch

from common.chat import chat_prompt, default_chat_template, instruction_text
from common.envs import apply_offline_defaults
from common.jsonl import read_instruction_rows
from common.models import load_model, load_tokenizer

REPO = Path(__file__).resolve().parents[1]
DEFAULT_MODELS = "models/qwen2.5-coder-1.5b-instruct,models/smollm2-135m-instruct,models/gemma-3-270m"


def encode(tokenizer, row: dict) -> tuple[list[int], list[int]]:
    """Prompt ids (through the model's template) and the answer's ids."""
    prompt = chat_prompt(tokenizer, instruction_text(row["instruction"], row.get("input", "")))
    prompt_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    answer_ids = tokenizer(row["output"], add_special_tokens=False)["input_ids"]
    return prompt_ids, answer_ids


@torch.inference_mode()
def answer_bits(model, tokenizer, rows: list[dict], batch_size: int) -> list[float]:
    """Summed negative log2-likelihood of each row's answer tokens, given its prompt."""
    encoded = [encode(tokenizer, row) for row in rows]
    order = sorted(range(len(rows)), key=lambda i: len(encoded[i][0]) + len(encoded[i][1]))
    bits = [0.0] * len(rows)
    pad = tokenizer.pad_token_id
    for start in range(0, len(order), batch_size):
        chunk = order[start : start + batch_size]
        width = max(len(encoded[i][0]) + len(encoded[i][1]) for i in chunk)
        ids = torch.full((len(chunk), width), pad, dtype=torch.long)
        mask = torch.zeros((len(chunk), width), dtype=torch.long)
        labels = torch.full((len(chunk), width), -100, dtype=torch.long)
        for row, i in enumerate(chunk):
            prompt_ids, answer_ids = encoded[i]
            full = prompt_ids + answer_ids
            ids[row, : len(full)] = torch.tensor(full)
            mask[row, : len(full)] = 1
            labels[row, len(prompt_ids) : len(full)] = torch.tensor(answer_ids)
        logits = model(input_ids=ids, attention_mask=mask).logits[:, :-1].float()
        target = labels[:, 1:]
        nll = torch.nn.functional.cross_entropy(
            logits.reshape(-1, logits.shape[-1]), target.reshape(-1), ignore_index=-100, reduction="none"
        ).reshape(target.shape)
        for row, i in enumerate(chunk):
            bits[i] = float(nll[row].sum()) / math.log(2)
    return bits


def summary(bits: list[float], rows: list[dict]) -> dict:
    total = sum(len(row["output"].encode()) for row in rows)
    by_category: dict[str, list[int]] = defaultdict(list)
    for i, row in enumerate(rows):
        by_category[row.get("category", "none")].append(i)
    return {
        "rows": len(rows),
        "bytes": total,
        "bits_per_byte": round(sum(bits) / total, 4),
        "per_category": {
            name: round(sum(bits[i] for i in idx) / sum(len(rows[i]["output"].encode()) for i in idx), 4)
            for name, idx in sorted(by_category.items())
        },
    }


def bootstrap_difference(a: list[float], b: list[float], rows: list[dict], *, resamples: int = 2000) -> list[float]:
    """95% percentile interval of bpb(a) - bpb(b), resampling rows (both models on the same rows)."""
    generator = torch.Generator().manual_seed(0)
    sizes = torch.tensor([len(row["output"].encode()) for row in rows], dtype=torch.float64)
    ta, tb = torch.tensor(a, dtype=torch.float64), torch.tensor(b, dtype=torch.float64)
    picks = torch.randint(0, len(rows), (resamples, len(rows)), generator=generator)
    diffs = (ta[picks].sum(1) - tb[picks].sum(1)) / sizes[picks].sum(1)
    low, high = torch.quantile(diffs, torch.tensor([0.025, 0.975], dtype=torch.float64)).tolist()
    return [round(low, 4), round(high, 4)]


def main() -> None:
    apply_offline_defaults()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--models", default=DEFAULT_MODELS, help="comma-separated model folders; the last is the student"
    )
    parser.add_argument("--rows", default=str(REPO / "data" / "eval.jsonl"))
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--dtype", default="float32", help="the main pass's weights dtype")
    parser.add_argument("--check-dtype", default="bfloat16", help="the dtype the check pass compares")
    parser.add_argument("--check-rows", type=int, default=8, help="rows scored in --check-dtype too (0: none)")
    parser.add_argument("--out", default=str(REPO / "bench" / "results" / "bpb-teacher-vs-student.json"))
    args = parser.parse_args()
    rows = read_instruction_rows(Path(args.rows))
    models = [m for m in args.models.split(",") if m]
    results: dict = {"rows_file": Path(args.rows).name, "student": models[-1], "models": {}}
    per_row: dict[str, list[float]] = {}
    for path in models:
        started = time.perf_counter()
        tokenizer = load_tokenizer(path, field="model")
        model = load_model(path, field="model", dtype=args.dtype)
        bits = answer_bits(model, tokenizer, rows, args.batch_size)
        entry = {"dtype": args.dtype, **summary(bits, rows), "seconds": round(time.perf_counter() - started, 1)}
        own = tokenizer.chat_template != default_chat_template(tokenizer)
        entry["template"] = "its own chat template" if own else "the project's plain template"
        if args.check_rows:
            subset = rows[: args.check_rows]
            started = time.perf_counter()
            answer_bits(model, tokenizer, subset, args.batch_size)
            main_seconds = time.perf_counter() - started
            del model
            model = load_model(path, field="model", dtype=args.check_dtype)
            started = time.perf_counter()
            other = answer_bits(model, tokenizer, subset, args.batch_size)
            check_seconds = time.perf_counter() - started
            entry["dtype_check"] = {
                "rows": len(subset),
                f"bits_per_byte_{args.dtype}": summary(bits[: len(subset)], subset)["bits_per_byte"],
                f"bits_per_byte_{args.check_dtype}": summary(other, subset)["bits_per_byte"],
                f"seconds_{args.dtype}": round(main_seconds, 1),
                f"seconds_{args.check_dtype}": round(check_seconds, 1),
            }
        del model
        per_row[path] = bits
        results["models"][path] = entry
        print(f"{path}: {entry['bits_per_byte']} bits/byte ({entry['seconds']} s)", flush=True)
    student = models[-1]
    results["teacher_minus_student"] = {
        path: {
            "difference": round(
                results["models"][path]["bits_per_byte"] - results["models"][student]["bits_per_byte"], 4
            ),
            "interval_95": bootstrap_difference(per_row[path], per_row[student], rows),
            "categories_lower": sum(
                results["models"][path]["per_category"][c] < results["models"][student]["per_category"][c]
                for c in results["models"][student]["per_category"]
            ),
            "categories": len(results["models"][student]["per_category"]),
        }
        for path in models[:-1]
    }
    results["machine"] = (
        f"{platform.machine()}, {torch.get_num_threads()} torch threads, torch {torch.__version__}, "
        f"CPU kernels {torch.backends.cpu.get_cpu_capability()}"
    )
    Path(args.out).write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps(results["teacher_minus_student"], indent=2))


if __name__ == "__main__":
    main()
