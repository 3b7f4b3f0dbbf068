"""Teacher generation throughput: the transformers backend vs vLLM, same prompts and sampling, one run.

The prompts are real synthesis prompts (8 seed examples each, completion style) and the
sampling settings are METHOD.md's (n=4, temperature 1.0, top-p 0.9, presence penalty 1.0).
No stop string (so samples run to the token budget unless they end); tokens/s counts the
tokens each backend actually generated. Each backend is timed on the same prompt batches the teacher service
sends (``--batch`` prompts per request); vLLM is also timed with all prompts in one request, and a teacher
version (an r=8 adapter) both ways it can be served: hot-swapped as an adapter, and merged into the weights
(``vllm.serving: merged``). Engine start-up, and the merged version's load (merge, engine restart, canary), are
reported apart. Ratios are against the transformers path as it was before the teacher
prefilled each prompt once for its n samples ("n-fold prefill": ``num_return_sequences`` repeats the prompt's
forward pass n times; ``--no-nfold`` leaves that row out and compares with the service's path);
``--transformers-bf16`` adds bf16 weights. ``--vllm-dtypes ''`` leaves vLLM out (then the
main environment runs it). Runs from the vLLM environment:

    .venv-vllm/bin/python bench/teacher.py [--model models/smollm2-135m-instruct] [--prompts 16]
"""

from __future__ import annotations

import argparse
import json
import platform
import random
import statistics
import tempfile
import time
from pathlib import Path

from common.envs import apply_offline_defaults
from common.jsonl import read_instruction_rows
from common.models import ModelRef
from services.teacher.adapters import random_adapter
from services.teacher.backend import GenerationBackend, SamplingParams, TransformersBackend
from services.teacher.prompts import pick_examples, seed_examples, synthesis_prompt

REPO = Path(__file__).resolve().parents[1]


def prompts(count: int, seed: int) -> list[str]:
    seeds = seed_examples(read_instruction_rows(REPO / "data" / "seed.jsonl"))
    rng = random.Random(seed)
    return [
        synthesis_prompt(pick_examples(seeds, [], total=8, from_generated=2, rng=rng), style="completion")
        for _ in range(count)
    ]


def timed(backend: GenerationBackend, texts: list[str], params: SamplingParams, batch: int) -> dict:
    before = backend.tokens_generated
    started = time.perf_counter()
    for start in range(0, len(texts), batch):
        backend.generate(
            texts[start : start + batch], SamplingParams(**{**params.to_dict(), "seed": params.seed + start})
        )
    seconds = time.perf_counter() - started
    tokens = backend.tokens_generated - before
    return {"seconds": round(seconds, 2), "tokens": tokens, "tokens_per_second": round(tokens / seconds, 1)}


def device() -> str:
    import torch

    if torch.cuda.is_available():
        return torch.cuda.get_device_name(0)
    return f"CPU ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"


def measure(
    model: str,
    texts: list[str],
    params: SamplingParams,
    batch: int,
    dtypes: list[str],
    transformers_dtypes: tuple[str, ...] = ("float32",),
    nfold: bool = True,
) -> dict:
    """One run: every row's tokens, seconds and tokens/s (engines started afresh).

    Ratios are against the first row: the n-fold prefill path, or (``nfold=False``, for a model whose n-fold
    path costs too long to time) the service's transformers path.
    """
    rows: dict = {}
    transformers = TransformersBackend(ModelRef(model), share_prefill=False)
    timed(transformers, texts[:1], SamplingParams(**{**params.to_dict(), "max_new_tokens": 4}), 1)  # warm-up
    if nfold:
        rows["transformers (fp32), n-fold prefill"] = timed(transformers, texts, params, batch)
    transformers.share_prefill = True  # each prompt's forward pass once for its n samples (the service's path)
    rows["transformers (fp32)"] = timed(transformers, texts, params, batch)
    rows["transformers (fp32), one request"] = timed(transformers, texts, params, len(texts))
    del transformers
    if "bfloat16" in transformers_dtypes:
        # bf16 weights: native matrix products on CPUs with AVX512-BF16/AMX; larger batches amortise the
        # per-step overhead that dominates one small batch.
        half = TransformersBackend(ModelRef(model), dtype="bfloat16")
        timed(half, texts[:1], SamplingParams(**{**params.to_dict(), "max_new_tokens": 4}), 1)
        rows["transformers (bf16)"] = timed(half, texts, params, batch)
        del half

    from services.teacher.config import VLLMSettings
    from services.teacher.vllm_backend import VLLMBackends

    for dtype in dtypes:
        with tempfile.TemporaryDirectory() as cache:
            started = time.perf_counter()
            backends = VLLMBackends(VLLMSettings(dtype=dtype, max_model_len=2048), cache_dir=Path(cache))
            backend = backends.get(ModelRef(model))
            start_seconds = round(time.perf_counter() - started, 1)
            timed(backend, texts[:1], SamplingParams(**{**params.to_dict(), "max_new_tokens": 4}), 1)
            short = "fp32" if dtype == "float32" else "bf16" if dtype == "bfloat16" else dtype
            rows[f"vLLM ({short}), same batches"] = {
                **timed(backend, texts, params, batch),
                "engine_start_seconds": start_seconds,
            }
            rows[f"vLLM ({short}), one request"] = timed(backend, texts, params, len(texts))
            # A teacher version as the loop serves it after a DPO round: an r=8 adapter, hot-swapped in.
            ref = ModelRef(model, (random_adapter(model, Path(cache) / "adapter", seed=0, scale=0.01),))
            backends.load_version("teacher-r1", ref)
            version = backends.get(ref, version="teacher-r1")
            timed(version, texts[:1], SamplingParams(**{**params.to_dict(), "max_new_tokens": 4}), 1)
            rows[f"vLLM ({short}) + r=8 adapter, same batches"] = timed(version, texts, params, batch)
            backends.close()
            # The same version merged into the weights: an engine of its own, LoRA off.
            merged = VLLMBackends(
                VLLMSettings(dtype=dtype, max_model_len=2048, serving="merged"), cache_dir=Path(cache)
            )
            started = time.perf_counter()
            merged.load_version("teacher-r1", ref)
            version = merged.get(ref, version="teacher-r1")
            load_seconds = round(time.perf_counter() - started, 1)
            timed(version, texts[:1], SamplingParams(**{**params.to_dict(), "max_new_tokens": 4}), 1)
            rows[f"vLLM ({short}), merged version, same batches"] = {
                **timed(version, texts, params, batch),
                "version_load_seconds": load_seconds,
            }
            merged.close()
    base = next(iter(rows.values()))["tokens_per_second"]
    for row in rows.values():
        row["ratio"] = round(row["tokens_per_second"] / base, 2)
    return rows


def spread(values: list[float]) -> dict:
    """Median, min and max of one figure over the runs."""
    return {"median": round(statistics.median(values), 2), "min": min(values), "max": max(values)}


def cpu_capability() -> str:
    """The SIMD kernels torch dispatches to (``ATEN_CPU_CAPABILITY`` lowers them), or the GPU."""
    import torch

    if torch.cuda.is_available():
        return "cuda"
    return torch.backends.cpu.get_cpu_capability()


def markdown(paths: list[str]) -> str:
    """One table of tokens/s and ratio (median [min, max]) per backend, a column pair per results file."""
    results = [json.loads(Path(path).read_text()) for path in paths]
    header = " | ".join(f"{r['cpu_capability']}: tokens/s | {r['cpu_capability']}: × transformers" for r in results)
    lines = [f"| backend | {header} |", "|---" * (1 + 2 * len(results)) + "|"]

    def cell(figure: dict, digits: int) -> str:
        return f"{figure['median']:.{digits}f} [{figure['min']:.{digits}f}, {figure['max']:.{digits}f}]"

    for name in results[0]["summary"]:
        cells = [
            f"{cell(r['summary'][name]['tokens_per_second'], 1)} | {cell(r['summary'][name]['ratio'], 2)}"
            for r in results
        ]
        lines.append(f"| {name} | {' | '.join(cells)} |")
    runs = ", ".join(f"{r['cpu_capability']} {len(r['runs'])}" for r in results)
    return "\n".join(lines) + f"\n\nRuns per column: {runs} (median [min, max] over the runs)."


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--markdown", nargs="+", default=None, help="print the table of these results files, run nothing"
    )
    parser.add_argument("--model", default="models/smollm2-135m-instruct")
    parser.add_argument("--prompts", type=int, default=16)
    parser.add_argument("--batch", type=int, default=4, help="prompts per request (the service's prompt_batch_size)")
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--vllm-dtypes", default="float32,bfloat16", help="engine dtypes to time, comma-separated")
    parser.add_argument(
        "--transformers-bf16", action="store_true", help="also the transformers backend with bf16 weights"
    )
    parser.add_argument(
        "--no-nfold", action="store_true", help="leave out the n-fold prefill row (ratios against the service's path)"
    )
    parser.add_argument("--runs", type=int, default=3, help="repetitions of the whole measurement (spread reported)")
    parser.add_argument("--output", default=None, help="JSON results (default bench/results/teacher-<model>.json)")
    args = parser.parse_args()
    if args.markdown:
        print(markdown(args.markdown))
        return
    apply_offline_defaults()

    texts = prompts(args.prompts, seed=0)
    params = SamplingParams(
        n=4, temperature=1.0, top_p=0.9, presence_penalty=1.0, max_new_tokens=args.max_new_tokens, seed=1
    )
    dtypes = list(filter(None, args.vllm_dtypes.split(",")))
    runs = []
    for run in range(args.runs):
        extra = ("float32", "bfloat16") if args.transformers_bf16 else ("float32",)
        runs.append(measure(args.model, texts, params, args.batch, dtypes, extra, nfold=not args.no_nfold))
        print(f"run {run + 1}/{args.runs}: " + ", ".join(f"{k} {v['tokens_per_second']}" for k, v in runs[-1].items()))
    results: dict = {
        "model": args.model,
        "device": device(),
        "cpu_capability": cpu_capability(),
        "prompts": len(texts),
        "n": params.n,
        "max_new_tokens": params.max_new_tokens,
        "batch": args.batch,
        "runs": runs,
        "summary": {
            name: {
                "tokens_per_second": spread([run[name]["tokens_per_second"] for run in runs]),
                "ratio": spread([run[name]["ratio"] for run in runs]),
            }
            for name in runs[0]
        },
    }
    print(
        f"\nTeacher generation on {results['device']} ({results['cpu_capability']}): {args.model}, {len(texts)} "
        f"synthesis prompts x n={params.n}, {params.max_new_tokens} new tokens, prompts per request {args.batch}, "
        f"{args.runs} runs (median [min, max])\n"
    )
    print(f"{'backend':42} {'tokens/s':>24} {'vs transformers':>24}")
    for name, row in results["summary"].items():
        tps, ratio = row["tokens_per_second"], row["ratio"]
        print(
            f"{name:42} {tps['median']:>8.1f} [{tps['min']:>6.1f}, {tps['max']:>6.1f}] "
            f"{ratio['median']:>8.2f}x [{ratio['min']:.2f}, {ratio['max']:.2f}]"
        )
    output = Path(args.output or REPO / "bench" / "results" / f"teacher-{Path(args.model).name}.json")
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(results, indent=2) + "\n")
    print(f"\nwrote {output}")


if __name__ == "__main__":  # vLLM starts its engine in child processes: the guard is required
    main()
