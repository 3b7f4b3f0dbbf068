"""The device check (issue 14): every stage's throughput on one accelerator, in one run, from real model
configurations with random weights.

For each model (``--size full``: SmolLM2-135M, Gemma-3-270M, Llama-3.2-1B, Llama-3-8B, built from their
published configurations with random weights; ``--size smoke``: a tiny Llama, seconds on a CPU) it measures,
side by side:

  influence  official   the official code's per-candidate structure: weights and AdamW state put back from a
                        host copy (a lower bound on its reload from disk), one step, then the reference rows
                        one at a time padded to 1024 tokens;
             exact / first_order / projected
                        this project's ``InfluenceScorer`` in each mode (state restored in memory, reference
                        rows in length-sorted batches; the estimates with no reference pass per candidate);
  generate   ``model.generate`` in bf16, greedy, a fixed number of new tokens;
  sft        AdamW steps on a batch of prompt + response rows (response-only loss);
  dpo        AdamW steps of the DPO loss: policy and frozen reference forward on chosen and rejected rows. The
             loss is written here in torch (the device has no TRL); it is TRL's sigmoid DPO loss.

Throughput does not depend on the weights or the text, so candidates, reference rows and prompts are random
token ids of realistic lengths fed through a tokenizer whose vocabulary is the ids themselves: the scorer's
own encoding, collation and loss code run unchanged.

Each figure comes with the model FLOPs it implies (2 x matmul parameters per token, lm head included, plus
causal attention; a backward pass counts twice a forward) and the fraction of the device's bound that is:
fp32 for influence (the scorer keeps fp32 master weights and TF32 is off), bf16 for the rest. Every cell is
guarded: an out-of-memory error or any other error is recorded and the run goes on; once ``--budget-s`` is
spent the remaining cells are recorded as skipped. The JSON (``--out``) is rewritten after every cell, so a
run killed from outside keeps what it measured (a cell it was in reads ``running``).

Usage: PYTHONPATH=. python bench/gpu_check.py --size smoke --device cpu
       PYTHONPATH=. python bench/gpu_check.py --size full --device cuda --budget-s 400   (or: make gpu-check)
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import functools
import gc
import json
import math
import os
import platform
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from common.chat import IGNORE_INDEX
from common.device import resolve_device
from services.influence.config import InfluenceConfig
from services.influence.scoring import Example, InfluenceScorer, collate

GIB = 1024**3
#: The paper's figure for exact influence on Llama-3-8B with 8 GPUs (issue 14), seconds per candidate.
PAPER_SECONDS_PER_CANDIDATE_8B_8GPU = 11.0

#: Datasheet bounds of an H100/H200 SXM (dense, no sparsity; the H200 has the H100's compute). Leads, not
#: readings: the run also measures a large matmul of each precision and a device-to-device copy.
H200_BOUNDS = {
    "bf16_tflops": 989.0,
    "tf32_tflops": 495.0,
    "fp32_tflops": 67.0,
    "hbm_tb_per_s": 4.8,
    "source": "NVIDIA H100/H200 SXM datasheet, dense",
}

#: The published configurations (random weights are drawn for them). RoPE scaling and other settings that do
#: not change the cost of a step are left at the library's defaults.
MODEL_CONFIGS: dict[str, tuple[str, dict]] = {
    "tiny-llama": (
        "llama",
        dict(
            hidden_size=64,
            intermediate_size=128,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            vocab_size=512,
            max_position_embeddings=256,
            tie_word_embeddings=True,
        ),
    ),
    "smollm2-135m": (
        "llama",
        dict(
            hidden_size=576,
            intermediate_size=1536,
            num_hidden_layers=30,
            num_attention_heads=9,
            num_key_value_heads=3,
            vocab_size=49152,
            max_position_embeddings=8192,
            rms_norm_eps=1e-5,
            tie_word_embeddings=True,
        ),
    ),
    "gemma-3-270m": (
        "gemma3_text",
        dict(
            hidden_size=640,
            intermediate_size=2048,
            num_hidden_layers=18,
            num_attention_heads=4,
            num_key_value_heads=1,
            head_dim=256,
            vocab_size=262144,
            max_position_embeddings=32768,
            sliding_window=512,
            query_pre_attn_scalar=256,
            layer_types=(["sliding_attention"] * 5 + ["full_attention"]) * 3,
            tie_word_embeddings=True,
        ),
    ),
    "llama-3.2-1b": (
        "llama",
        dict(
            hidden_size=2048,
            intermediate_size=8192,
            num_hidden_layers=16,
            num_attention_heads=32,
            num_key_value_heads=8,
            vocab_size=128256,
            max_position_embeddings=131072,
            rms_norm_eps=1e-5,
            tie_word_embeddings=True,
        ),
    ),
    "llama-3-8b": (
        "llama",
        dict(
            hidden_size=4096,
            intermediate_size=14336,
            num_hidden_layers=32,
            num_attention_heads=32,
            num_key_value_heads=8,
            vocab_size=128256,
            max_position_embeddings=8192,
            rms_norm_eps=1e-5,
            tie_word_embeddings=False,
        ),
    ),
}


@dataclass(frozen=True)
class ModelPlan:
    """How one model is measured. ``influence_optimizer`` 'faithful' restores AdamW state per candidate (the
    method's default); 'sgd' keeps none (for a student whose fp32 weights, AdamW moments and the scorer's
    snapshot of both do not fit). ``train_precision`` 'autocast' trains fp32 master weights under bf16
    autocast (as TRL with bf16=True); 'bf16' trains bf16 weights (AdamW moments in bf16)."""

    name: str
    influence_optimizer: str = "faithful"
    reference_batch_size: int = 16
    candidates: int | None = None  # None: the size's count
    official_candidates: int | None = None  # None: the size's count
    train_precision: str = "autocast"
    cells: tuple[str, ...] = ("official", "exact", "first_order", "projected", "sft", "dpo", "generate")
    note: str = ""


@dataclass(frozen=True)
class Size:
    """Lengths and counts of one size of the check."""

    models: tuple[ModelPlan, ...]
    prompt_tokens: int  # candidate and reference rows: prompt + response tokens
    response_tokens: int
    reference_rows: int
    candidates: int
    official_candidates: int
    projected_candidates: int  # the projected mode's host-side cost per candidate is large at 1B+ (see its note)
    official_pad: int  # the official code pads every reference row to this many tokens
    generate_batch: int
    generate_prompt: int
    generate_new: int
    train_batch: int  # SFT rows per step; DPO pairs per step is half of it (chosen + rejected = as many rows)
    train_tokens: int
    train_steps: int
    learning_rate: float = 5e-6  # the influence step's lr (the paper's warm-up lr)


_8B_FIT = "fp32 weights + AdamW moments + the scorer's snapshot of both = 6 x 32 GB, over the 139 GiB of one H200"
SIZES = {
    "smoke": Size(
        models=(ModelPlan("tiny-llama", reference_batch_size=2),),
        prompt_tokens=8,
        response_tokens=24,
        reference_rows=4,
        candidates=3,
        official_candidates=2,
        projected_candidates=3,
        official_pad=64,
        generate_batch=2,
        generate_prompt=8,
        generate_new=8,
        train_batch=2,
        train_tokens=32,
        train_steps=2,
    ),
    "full": Size(
        models=(
            ModelPlan("smollm2-135m"),
            ModelPlan("gemma-3-270m"),
            ModelPlan("llama-3.2-1b"),
            # The projected cell last: its host-side cost at 8e9 parameters is the least certain (it is skipped when
            # its estimate exceeds what is left of the budget).
            ModelPlan(
                "llama-3-8b",
                influence_optimizer="sgd",
                reference_batch_size=4,
                candidates=4,
                official_candidates=1,
                train_precision="bf16",
                cells=("exact", "first_order", "official", "sft", "dpo", "generate", "projected"),
                note="influence (all modes, official-style too) with optimizer 'sgd' in fp32: faithful AdamW does "
                "not fit (" + _8B_FIT + "); SFT/DPO on bf16 weights with bf16 AdamW moments (fp32 master + "
                "moments + grads = 128 GB before activations)",
            ),
        ),
        prompt_tokens=64,
        response_tokens=192,
        reference_rows=16,
        candidates=8,
        official_candidates=2,
        projected_candidates=4,
        official_pad=1024,
        generate_batch=16,
        generate_prompt=128,
        generate_new=128,
        train_batch=2,
        train_tokens=512,
        train_steps=5,
    ),
}


class IdTokenizer:
    """A tokenizer whose vocabulary is the token ids: text is ids written in decimal, and the chat template puts
    the turns one after the other. Lets the scorer's own encoding path run on random ids."""

    pad_token_id = 0

    def apply_chat_template(self, messages, tokenize: bool = False, add_generation_prompt: bool = False) -> str:
        return "".join(message["content"] + " " for message in messages)

    def __call__(self, text: str, add_special_tokens: bool = False) -> dict:
        return {"input_ids": [int(token) for token in text.split()]}


def random_ids(generator: torch.Generator, vocab: int, count: int) -> list[int]:
    """Token ids in [1, vocab) (0 is the padding id)."""
    return torch.randint(1, vocab, (count,), generator=generator).tolist()


def random_examples(
    generator: torch.Generator, vocab: int, count: int, prompt: int, response: int, prefix: str
) -> list[Example]:
    return [
        Example(
            f"{prefix}-{i}",
            " ".join(map(str, random_ids(generator, vocab, prompt))),
            " ".join(map(str, random_ids(generator, vocab, response))),
        )
        for i in range(count)
    ]


# -- model FLOPs --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Shape:
    """What the FLOP count needs from a model."""

    matmul_parameters: int  # every nn.Linear weight, the (possibly tied) lm head included
    parameters: int  # distinct parameters
    layers: int
    attention_width: int  # heads x head_dim

    @classmethod
    def of(cls, model) -> Shape:
        config = model.config
        head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
        return cls(
            sum(m.weight.numel() for m in model.modules() if isinstance(m, torch.nn.Linear)),
            sum(p.numel() for p in model.parameters()),
            config.num_hidden_layers,
            config.num_attention_heads * head_dim,
        )

    def forward(self, rows: int, tokens: int) -> float:
        """Forward FLOPs of ``rows`` sequences of ``tokens`` (causal attention: half of the T x T products)."""
        return rows * (2.0 * self.matmul_parameters * tokens + 2.0 * self.layers * self.attention_width * tokens**2)

    def generate(self, rows: int, prompt: int, new: int) -> float:
        """Prefill of the prompt, then one token at a time attending to everything before it."""
        decode = sum(
            2.0 * self.matmul_parameters + 4.0 * self.layers * self.attention_width * (prompt + t)
            for t in range(1, new)
        )
        return self.forward(rows, prompt) + rows * decode


# -- the run's bookkeeping ----------------------------------------------------------------------------------


class Report:
    """The JSON report, rewritten (atomically) after every change."""

    def __init__(self, path: Path, header: dict):
        self.path = path
        self.data = {**header, "models": {}, "cells": [], "ratios": {}}
        self.write()

    def write(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        staged = self.path.with_name(self.path.name + ".tmp")
        staged.write_text(json.dumps(self.data, indent=2, sort_keys=True) + "\n")
        os.replace(staged, self.path)


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(device: torch.device, fn: Callable):
    synchronize(device)
    start = time.perf_counter()
    result = fn()
    synchronize(device)
    return result, time.perf_counter() - start


def free_memory(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def environment(device: torch.device) -> dict:
    import transformers

    env = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "torch_cuda": torch.version.cuda,
        "device": str(device),
        "cpu_count": os.cpu_count(),
        "machine": platform.machine(),
        "float32_matmul_precision": torch.get_float32_matmul_precision(),
        "torch_threads": torch.get_num_threads(),
        "pytorch_cuda_alloc_conf": os.environ.get("PYTORCH_CUDA_ALLOC_CONF"),
    }  # recorded, not configuration
    if device.type == "cuda":
        properties = torch.cuda.get_device_properties(device)
        env.update(
            {
                "device_name": properties.name,
                "capability": f"{properties.major}.{properties.minor}",
                "memory_gib": round(properties.total_memory / GIB, 1),
                "multiprocessors": properties.multi_processor_count,
                "device_count": torch.cuda.device_count(),
            }
        )
    return env


def measured_ceilings(device: torch.device) -> dict:
    """A large matmul of each precision (random data, ten after three warm-ups) and a device-to-device copy."""
    if device.type != "cuda":
        return {}
    out = {}
    n = 8192
    for name, dtype in (("bf16_matmul_tflops", torch.bfloat16), ("fp32_matmul_tflops", torch.float32)):
        a, b = torch.randn(n, n, device=device, dtype=dtype), torch.randn(n, n, device=device, dtype=dtype)
        for _ in range(3):
            a @ b
        _, seconds = timed(device, lambda a=a, b=b: [a @ b for _ in range(10)])
        out[name] = round(10 * 2 * n**3 / seconds / 1e12, 1)
        del a, b
    source = torch.empty(4 * GIB, dtype=torch.uint8, device=device)
    target = torch.empty_like(source)
    target.copy_(source)
    _, seconds = timed(device, lambda target=target, source=source: [target.copy_(source) for _ in range(10)])
    out["copy_tb_per_s"] = round(10 * 2 * source.numel() / seconds / 1e12, 2)  # bytes read + written
    del source, target
    free_memory(device)
    return out


def host_code_cost(device: torch.device, count: int = 10_000_000) -> dict:
    """What the projected mode pays per parameter on the host: drawing a count-sketch code (int16, as
    services/influence/sketch.py draws and caches them) and copying it to the device as int32 (as it does per use)."""
    generator = torch.Generator().manual_seed(0)
    start = time.perf_counter()
    codes = torch.randint(0, 32768, (count,), generator=generator, dtype=torch.int16)
    draw = time.perf_counter() - start
    _, copy_seconds = timed(device, lambda: codes.to(device=device, dtype=torch.int32))
    return {"draw_ns_per_code": draw / count * 1e9, "copy_ns_per_code": copy_seconds / count * 1e9}


# -- one model's measurements ------------------------------------------------------------------------------


class ModelRun:
    """One model (built once, cast between fp32 and bf16 as cells need) and the influence state its cells share."""

    def __init__(self, plan: ModelPlan, size: Size, device: torch.device, seed: int):
        self.plan, self.size, self.device = plan, size, device
        family, values = MODEL_CONFIGS[plan.name]
        self.family, self.config_values = family, values
        self.generator = torch.Generator().manual_seed(seed)
        self.tokenizer = IdTokenizer()
        self._model = None
        self.shape: Shape | None = None
        self.build_seconds: float | None = None
        self.optimizer: torch.optim.Optimizer | None = None
        self.scorer: InfluenceScorer | None = None
        self.scorer_setup_seconds: float | None = None
        vocab = values["vocab_size"]
        self.reference = random_examples(
            self.generator, vocab, size.reference_rows, size.prompt_tokens, size.response_tokens, "ref"
        )
        count = plan.candidates or size.candidates
        self.candidates = random_examples(
            self.generator, vocab, count, size.prompt_tokens, size.response_tokens, "cand"
        )
        self.warmup_candidate = random_examples(
            self.generator, vocab, 1, size.prompt_tokens, size.response_tokens, "warm"
        )[0]

    @property
    def vocab(self) -> int:
        return self.config_values["vocab_size"]

    def model(self, dtype: torch.dtype = torch.float32):
        """The model in ``dtype`` (built on the device on first use: random weights, seeded)."""
        if self._model is None:
            from transformers import AutoConfig, AutoModelForCausalLM

            config = AutoConfig.for_model(self.family, **self.config_values)
            torch.manual_seed(0)

            def build():
                with torch.device(
                    self.device
                ):  # drawn on the device: an 8B model's random init on the host takes minutes
                    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32, attn_implementation="sdpa")
                return model.to(self.device)

            self._model, self.build_seconds = timed(self.device, build)
            self.shape = Shape.of(self._model)
        if next(self._model.parameters()).dtype != dtype:
            self.drop_influence()
            self._model.to(dtype)
            free_memory(self.device)
        return self._model

    def adamw(self) -> torch.optim.Optimizer:
        """The warm-up's AdamW with state (one real step on a random row), as the scorer's faithful mode restores
        it; the per-parameter implementation that the service's ``load_adamw`` builds."""
        if self.optimizer is None:
            model = self.model(torch.float32)
            self.optimizer = torch.optim.AdamW(
                model.parameters(), lr=self.size.learning_rate, weight_decay=0.0, foreach=False, fused=False
            )
            batch = self.batch([self.warmup_candidate])
            model(**batch).loss.backward()
            self.optimizer.step()
            self.optimizer.zero_grad(set_to_none=True)
        return self.optimizer

    def influence_scorer(self) -> InfluenceScorer:
        """The scorer (built once per model; its setup, the snapshot and the reference loss L0 plus the shared
        zero-gradient step in faithful mode, is timed once and charged to every mode)."""
        if self.scorer is None:
            model = self.model(torch.float32)
            faithful = self.plan.influence_optimizer == "faithful"
            optimizer = self.adamw() if faithful else None
            config = InfluenceConfig(
                optimizer=self.plan.influence_optimizer,
                sgd_learning_rate=self.size.learning_rate,
                reference_batch_size=self.plan.reference_batch_size,
                max_length=self.size.prompt_tokens + self.size.response_tokens,
                device=str(self.device),
            )

            def setup():
                scorer = InfluenceScorer(model, self.tokenizer, self.reference, config, optimizer)
                scorer.shared_loss  # noqa: B018 - computed once per student version, part of the setup
                return scorer

            self.scorer, self.scorer_setup_seconds = timed(self.device, setup)
        return self.scorer

    def drop_influence(self) -> None:
        self.scorer = None
        self.optimizer = None
        if self._model is not None:
            self._model.zero_grad(set_to_none=True)
        free_memory(self.device)

    def close(self) -> None:
        self.drop_influence()
        self._model = None
        free_memory(self.device)

    def batch(self, examples: list[Example], *, pad_to: int | None = None) -> dict[str, torch.Tensor]:
        """Encoded, collated (right-padded to the longest or to ``pad_to``) and on the device."""
        from common.chat import encode_example

        encoded = [
            encode_example(self.tokenizer, e.user_text, e.response, max_length=1 << 20, where=e.id) for e in examples
        ]
        batch = collate(encoded, self.tokenizer.pad_token_id)
        extra = (pad_to or 0) - batch["input_ids"].shape[1]
        if extra > 0:
            batch = {
                "input_ids": torch.nn.functional.pad(batch["input_ids"], (0, extra), value=self.tokenizer.pad_token_id),
                "attention_mask": torch.nn.functional.pad(batch["attention_mask"], (0, extra), value=0),
                "labels": torch.nn.functional.pad(batch["labels"], (0, extra), value=IGNORE_INDEX),
            }
        return {key: value.to(self.device) for key, value in batch.items()}

    @property
    def candidate_tokens(self) -> int:
        return self.size.prompt_tokens + self.size.response_tokens

    # -- cells (each returns its figures; FLOPs are per unit of the rate) ----------------------------------

    def official(self) -> dict:
        """Per candidate: weights and AdamW state put back from host copies, one step on the candidate, then the
        reference rows one at a time padded to ``official_pad`` (the official code's structure; bench/influence.py
        reloads from disk, which costs more). With the plan's optimizer 'sgd' there is no state to put back."""
        self.scorer = None  # its snapshot and reference gradient are not the official code's; free them
        free_memory(self.device)
        model = self.model(torch.float32)
        faithful = self.plan.influence_optimizer == "faithful"
        host_optimizer = None
        if faithful:
            state = self.adamw().state_dict()
            host_optimizer = {
                "param_groups": copy.deepcopy(state["param_groups"]),
                "state": {
                    index: {
                        key: value.detach().to("cpu", copy=True) if torch.is_tensor(value) else value
                        for key, value in entry.items()
                    }
                    for index, entry in state["state"].items()
                },
            }
        host_weights = {key: value.detach().to("cpu", copy=True) for key, value in model.state_dict().items()}
        pad = min(self.size.official_pad, int(model.config.max_position_embeddings))
        rows = [self.batch([row], pad_to=pad) for row in self.reference]

        def reference_loss() -> float:
            with torch.no_grad():
                return float(torch.stack([model(**row).loss for row in rows]).mean())

        base = reference_loss()

        def one(candidate: Example) -> float:
            model.load_state_dict(host_weights)
            if faithful:
                fresh = torch.optim.AdamW(model.parameters(), foreach=False, fused=False)
                fresh.load_state_dict(host_optimizer)
            else:
                fresh = torch.optim.SGD(model.parameters(), lr=self.size.learning_rate, foreach=False)
            model(**self.batch([candidate])).loss.backward()
            fresh.step()
            model.zero_grad(set_to_none=True)
            return base - reference_loss()

        try:
            one(self.warmup_candidate)
            count = min(self.plan.official_candidates or self.size.official_candidates, len(self.candidates))
            _, seconds = timed(self.device, lambda: [one(c) for c in self.candidates[:count]])
        finally:
            model.load_state_dict(host_weights)
            model.zero_grad(set_to_none=True)
        flops = 3 * self.shape.forward(1, self.candidate_tokens) + len(rows) * self.shape.forward(1, pad)
        return {
            "unit": "candidates",
            "count": count,
            "seconds": seconds,
            "rate": count / seconds,
            "flops_per_unit": flops,
            "precision": "fp32",
            "reference_rows": len(rows),
            "reference_pad": pad,
            "optimizer": self.plan.influence_optimizer,
            "note": "weights" + (" and AdamW state" if faithful else "") + " copied back from host memory before "
            "each candidate (the official code reloads them from disk)",
        }

    def projected_cost(self, host: dict) -> float:
        """Seconds the projected cell is expected to spend on the host: drawing one count-sketch code per parameter
        once, then copying the codes to the device once per reference batch, for the shared term and per candidate."""
        if self.shape is None:
            self.model(torch.float32)
        parameters = self.shape.parameters  # every parameter is trainable here; no cast needed to count them
        uses = math.ceil(len(self.reference) / self.plan.reference_batch_size) + 1 + 1 + self.size.projected_candidates
        return parameters * (host["draw_ns_per_code"] + uses * host["copy_ns_per_code"]) * 1e-9

    def influence(self, mode: str) -> dict:
        scorer = self.influence_scorer()
        mode_setup = {
            "exact": lambda: None,
            "first_order": lambda: scorer.shared_terms(),
            "projected": lambda: scorer.projected_reference(),
        }[mode]
        _, setup_seconds = timed(self.device, mode_setup)
        candidates = self.candidates[: self.size.projected_candidates] if mode == "projected" else self.candidates
        scorer.score([self.warmup_candidate], mode=mode)
        rows, seconds = timed(self.device, lambda: scorer.score(candidates, mode=mode))
        count = len(rows)
        step = 3 * self.shape.forward(1, self.candidate_tokens)
        flops = step + (self.shape.forward(len(self.reference), self.candidate_tokens) if mode == "exact" else 0.0)
        setup = (self.scorer_setup_seconds or 0.0) + setup_seconds
        figures = {
            "unit": "candidates",
            "count": count,
            "seconds": seconds,
            "rate": count / seconds,
            "setup_seconds": setup,
            "rate_with_setup": count / (seconds + setup),
            "flops_per_unit": flops,
            "precision": "fp32",
            "optimizer": self.plan.influence_optimizer,
            "reference_rows": len(self.reference),
            "reference_batch_size": self.plan.reference_batch_size,
            "influence_spread": float(torch.tensor([r["influence"] for r in rows]).std()) if count > 1 else None,
        }
        if mode == "projected":
            figures["projection_dim"] = scorer.config.projection_dim
            figures["note"] = (
                "the count sketch's codes are drawn and cached on the host (services/influence/sketch.py) "
                "and copied to the device for every tensor of every candidate"
            )
        return figures

    def sft(self) -> dict:
        autocast = self.plan.train_precision == "autocast"
        model = self.model(torch.float32 if autocast else torch.bfloat16)
        self.drop_influence()
        model.train()
        size = self.size
        prompt = size.train_tokens // 4
        rows = random_examples(self.generator, self.vocab, size.train_batch, prompt, size.train_tokens - prompt, "sft")
        batch = self.batch(rows)
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5, fused=self.device.type == "cuda")

        def step():
            with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=autocast):
                loss = model(**batch).loss
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            return loss.detach()

        try:
            step()
            losses, seconds = timed(self.device, lambda: [step() for _ in range(size.train_steps)])
        finally:
            optimizer = None  # frees the optimizer state now (rebound rather than deleted: step() closes over it)
            model.zero_grad(set_to_none=True)
            model.train(False)
        return {
            "unit": "steps",
            "count": size.train_steps,
            "seconds": seconds,
            "rate": size.train_steps / seconds,
            "tokens_per_s": size.train_steps * size.train_batch * size.train_tokens / seconds,
            "flops_per_unit": 3 * self.shape.forward(size.train_batch, size.train_tokens),
            "precision": "bf16",
            "weights": "fp32 master, bf16 autocast" if autocast else "bf16 (no fp32 master)",
            "batch": f"{size.train_batch}x{size.train_tokens}",
            "optimizer": "torch AdamW (fused on CUDA)",
            "loss_finite": bool(torch.isfinite(torch.stack(losses)).all()),
        }

    def dpo(self, beta: float = 0.1) -> dict:
        """TRL's sigmoid DPO loss, -log sigmoid(beta [(pi_c - pi_r) - (ref_c - ref_r)]), on summed response
        log-probabilities; written here because the device has no TRL."""
        autocast = self.plan.train_precision == "autocast"
        policy = self.model(torch.float32 if autocast else torch.bfloat16)
        self.drop_influence()
        size = self.size
        pairs = max(1, size.train_batch // 2)
        prompt = size.train_tokens // 4
        prompts = [" ".join(map(str, random_ids(self.generator, self.vocab, prompt))) for _ in range(pairs)]
        responses = [
            " ".join(map(str, random_ids(self.generator, self.vocab, size.train_tokens - prompt)))
            for _ in range(2 * pairs)
        ]
        rows = [
            Example(f"dpo-{i}", prompts[i % pairs], responses[i]) for i in range(2 * pairs)
        ]  # chosen, then rejected
        batch = self.batch(rows)
        reference = copy.deepcopy(policy).to(torch.bfloat16).requires_grad_(False)
        policy.train()
        optimizer = torch.optim.AdamW(policy.parameters(), lr=5e-7, fused=self.device.type == "cuda")

        def log_probs(model) -> torch.Tensor:
            logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[:, :-1]
            targets = batch["labels"][:, 1:]
            return -torch.nn.functional.cross_entropy(
                logits.float().transpose(1, 2), targets, ignore_index=IGNORE_INDEX, reduction="none"
            ).sum(dim=1)

        def step():
            with torch.no_grad(), torch.autocast(self.device.type, dtype=torch.bfloat16):
                ref = log_probs(reference)
            with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=autocast):
                pol = log_probs(policy)
            margin = (pol[:pairs] - pol[pairs:]) - (ref[:pairs] - ref[pairs:])
            loss = -torch.nn.functional.logsigmoid(beta * margin).mean()
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            return loss.detach()

        try:
            step()
            losses, seconds = timed(self.device, lambda: [step() for _ in range(size.train_steps)])
        finally:
            optimizer = reference = None  # frees both now (rebound rather than deleted: step() closes over them)
            policy.zero_grad(set_to_none=True)
            policy.train(False)
        rows_per_step = 2 * pairs
        return {
            "unit": "steps",
            "count": size.train_steps,
            "seconds": seconds,
            "rate": size.train_steps / seconds,
            "flops_per_unit": 4 * self.shape.forward(rows_per_step, size.train_tokens),
            "precision": "bf16",
            "weights": "fp32 master, bf16 autocast" if autocast else "bf16 (no fp32 master)",
            "batch": f"{pairs} pair(s) x 2 x {size.train_tokens}",
            "reference_model": "bf16 copy, frozen",
            "loss": "sigmoid DPO, beta 0.1, written in torch (no TRL on the device)",
            "loss_finite": bool(torch.isfinite(torch.stack(losses)).all()),
        }

    def generate(self) -> dict:
        model = self.model(torch.bfloat16)
        size = self.size
        ids = torch.randint(1, self.vocab, (size.generate_batch, size.generate_prompt), generator=self.generator).to(
            self.device
        )
        mask = torch.ones_like(ids)

        def run(new: int):
            return model.generate(
                input_ids=ids,
                attention_mask=mask,
                max_new_tokens=new,
                min_new_tokens=new,
                do_sample=False,
                pad_token_id=0,
            )

        run(min(8, size.generate_new))
        out, seconds = timed(self.device, lambda: run(size.generate_new))
        new = out.shape[1] - ids.shape[1]
        tokens = size.generate_batch * new
        bytes_per_step = 2 * self.shape.matmul_parameters  # bf16 weights read once per decoding step
        return {
            "unit": "tokens",
            "count": tokens,
            "seconds": seconds,
            "rate": tokens / seconds,
            "flops_per_unit": self.shape.generate(size.generate_batch, size.generate_prompt, new) / tokens,
            "precision": "bf16",
            "batch": size.generate_batch,
            "prompt_tokens": size.generate_prompt,
            "new_tokens": new,
            "weight_bytes_per_s": bytes_per_step * new / seconds,
            "decoding": "greedy, transformers generate, sdpa",
        }


# -- the run ----------------------------------------------------------------------------------------------


def with_bounds(figures: dict, bounds: dict, measured: dict) -> dict:
    """Adds the achieved TFLOP/s and its fraction of the datasheet and the measured bound of its precision."""
    if figures.get("flops_per_unit") is None or not figures.get("rate"):
        return figures
    tflops = figures["flops_per_unit"] * figures["rate"] / 1e12
    figures["tflops"] = tflops
    precision = figures["precision"]
    if bounds:
        figures["fraction_of_datasheet"] = tflops / bounds[f"{precision}_tflops"]
    if measured.get(f"{precision}_matmul_tflops"):
        figures["fraction_of_measured_matmul"] = tflops / measured[f"{precision}_matmul_tflops"]
    if "weight_bytes_per_s" in figures:
        if bounds:
            figures["fraction_of_datasheet_hbm"] = figures["weight_bytes_per_s"] / (bounds["hbm_tb_per_s"] * 1e12)
        if measured.get("copy_tb_per_s"):
            figures["fraction_of_measured_copy"] = figures["weight_bytes_per_s"] / (measured["copy_tb_per_s"] * 1e12)
    return figures


def ratios(cells: list[dict]) -> dict:
    """Each influence mode's rate over the official-style rate of the same model (steady and with setup), and the
    8B exact figure against the paper's."""
    out: dict[str, dict] = {}
    by_model: dict[str, dict[str, dict]] = {}
    for cell in cells:
        if cell["status"] == "ok":
            by_model.setdefault(cell["model"], {})[cell["cell"]] = cell
    for model, found in by_model.items():
        row = {}
        official = found.get("official")
        for mode in ("exact", "first_order", "projected"):
            if official and mode in found:
                row[f"{mode}_vs_official"] = found[mode]["rate"] / official["rate"]
                row[f"{mode}_with_setup_vs_official"] = found[mode]["rate_with_setup"] / official["rate"]
        if model == "llama-3-8b" and "exact" in found:
            row["exact_seconds_per_candidate"] = 1.0 / found["exact"]["rate"]
            row["paper_seconds_per_candidate_8_gpus"] = PAPER_SECONDS_PER_CANDIDATE_8B_8GPU
            row["note"] = (
                "not like for like: the paper's figure is for 8 GPUs and 256 reference rows; this is one GPU, "
                f"{found['exact']['reference_rows']} reference rows, optimizer {found['exact']['optimizer']}"
            )
        if row:
            out[model] = row
    return out


def format_rate(cell: dict) -> str:
    unit = {"candidates": "cand/s", "steps": "steps/s", "tokens": "tok/s"}[cell["unit"]]
    return f"{cell['rate']:.4g} {unit}"


def print_table(report: dict) -> None:
    print(
        f"\n{'model':<14} {'cell':<12} {'status':<8} {'rate':>18} {'setup s':>8} {'TFLOP/s':>8} {'% bound':>8} "
        f"{'peak GiB':>9} {'x official':>10}"
    )
    ratio = report["ratios"]
    for cell in report["cells"]:
        line = f"{cell['model']:<14} {cell['cell']:<12} {cell['status']:<8} "
        if cell["status"] != "ok":
            print(line + (cell.get("reason") or cell.get("error") or "")[:90])
            continue
        bound = cell.get("fraction_of_datasheet")
        peak = cell.get("peak_memory_gib")
        speedup = ratio.get(cell["model"], {}).get(cell["cell"] + "_vs_official")
        print(
            line + f"{format_rate(cell):>18} {optional(cell.get('setup_seconds'), spec='.2f'):>8} "
            f"{optional(cell.get('tflops'), spec='.3g'):>8} {optional(bound, 100):>8} {optional(peak):>9} "
            f"{optional(speedup):>10}"
        )


def optional(value: float | None, scale: float = 1.0, spec: str = ".1f") -> str:
    return "" if value is None else format(scale * value, spec)


def run_cell(run: ModelRun, name: str, *, remaining_s: float, host: dict) -> dict:
    if name == "projected":
        estimate = 1.25 * run.projected_cost(host)
        if estimate > remaining_s:
            raise Skip(
                f"estimated {estimate:.0f} s of host-side count-sketch work (codes drawn on the host, copied per "
                f"use) exceeds the {remaining_s:.0f} s left of the budget"
            )
        return {**run.influence(name), "estimated_host_seconds": estimate / 1.25}
    if name in ("exact", "first_order"):
        return run.influence(name)
    return getattr(run, name)()


class Skip(Exception):
    """A cell this plan does not measure, with the reason."""


def main(args: argparse.Namespace) -> dict:
    started = time.monotonic()
    device = resolve_device(args.device, field="--device")
    size = SIZES[args.size]
    kind = torch.cuda.get_device_name(device).split()[-1].lower() if device.type == "cuda" else "cpu"
    out = Path(args.out or f"bench/results/gpu-check-{kind}.json")
    env = environment(device)
    bounds = H200_BOUNDS if "H200" in env.get("device_name", "") or "H100" in env.get("device_name", "") else {}
    report = Report(
        out,
        {
            "size": args.size,
            "budget_s": args.budget_s,
            "environment": env,
            "datasheet_bounds": bounds,
            "settings": dataclasses.asdict(size),
            "flops": "model FLOPs: 2 x nn.Linear weights (lm head included) per token + causal attention "
            "2 x layers x heads x head_dim x T^2 per sequence; backward = 2 x forward",
        },
    )
    print(
        f"device {env.get('device_name', device)}  torch {env['torch']}  transformers {env['transformers']}", flush=True
    )
    report.data["measured_ceilings"] = measured = measured_ceilings(device)
    report.data["host_code_cost"] = host = host_code_cost(device)
    report.write()
    if measured:
        print(f"measured ceilings: {measured}", flush=True)
    models = [m for m in size.models if not args.models or m.name in args.models]
    for plan in models:
        run = ModelRun(plan, size, device, seed=args.seed)
        broken = None
        for name in plan.cells:
            cell = {"model": plan.name, "cell": name, "status": "running"}
            report.data["cells"].append(cell)
            report.write()
            if time.monotonic() - started > args.budget_s:
                cell.update(status="skipped", reason=f"time budget of {args.budget_s:.0f} s spent")
            elif broken:
                cell.update(status="skipped", reason=f"model could not be built: {broken}")
            else:
                if device.type == "cuda":
                    torch.cuda.reset_peak_memory_stats(device)
                try:
                    remaining = args.budget_s - (time.monotonic() - started)
                    figures, seconds = timed(
                        device, functools.partial(run_cell, run, name, remaining_s=remaining, host=host)
                    )
                    cell.update(status="ok", wall_seconds=seconds, **with_bounds(figures, bounds, measured))
                except Skip as skip:
                    cell.update(status="skipped", reason=str(skip))
                except torch.OutOfMemoryError as err:
                    cell.update(status="oom", error=str(err).splitlines()[0][:300])
                    run.drop_influence()
                except Exception as err:  # one cell's failure is recorded; the others still run
                    cell.update(
                        status="error",
                        error=f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"[:300],
                        traceback=traceback.format_exc()[-1500:],
                    )
                    run.drop_influence()
                if run.shape is None and cell["status"] in ("oom", "error"):
                    broken = cell["error"]
                if device.type == "cuda":
                    cell["peak_memory_gib"] = torch.cuda.max_memory_allocated(device) / GIB
            report.data["ratios"] = ratios(report.data["cells"])
            report.data["elapsed_s"] = time.monotonic() - started
            report.write()
            status = cell["status"] if cell["status"] != "ok" else format_rate(cell)
            print(f"[{time.monotonic() - started:6.1f} s] {plan.name:<14} {name:<12} {status}", flush=True)
        if run.shape is not None:
            report.data["models"][plan.name] = {
                "family": run.family,
                "config": run.config_values,
                "parameters": run.shape.parameters,
                "matmul_parameters": run.shape.matmul_parameters,
                "build_seconds": run.build_seconds,
                "note": plan.note or None,
                "influence_optimizer": plan.influence_optimizer,
                "train_precision": plan.train_precision,
            }
        run.close()
        del run
        free_memory(device)
    report.data["elapsed_s"] = time.monotonic() - started
    report.write()
    print_table(report.data)
    print(f"wrote {out}")
    return report.data


def render_markdown(report: dict) -> str:
    """docs/benchmarks.md's tables from a report: influence against the official-style baseline (fp32 bound), then
    training and generation (bf16 bound), then what was not measured and why."""
    cells, ratio, models = report["cells"], report["ratios"], report["models"]
    measured = report.get("measured_ceilings", {})

    def pct(value):
        return "–" if value is None else f"{100 * value:.1f}%"

    def num(value, spec=".3g"):
        return "–" if value is None else format(value, spec)

    lines = [
        "| model (parameters) | method | optimizer | cand | cand/s | setup s | cand/s incl. setup | × official | "
        "× official incl. setup | TFLOP/s | % fp32 datasheet | % fp32 matmul measured | peak GiB |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for cell in cells:
        if cell["status"] != "ok" or cell["unit"] != "candidates":
            continue
        own = ratio.get(cell["model"], {})
        official = cell["cell"] == "official"
        label = f"{cell['model']} ({models.get(cell['model'], {}).get('parameters', 0) / 1e9:.3g}B)"
        lines.append(
            f"| {label} | {cell['cell']}"
            f"{' (k=' + str(cell['projection_dim']) + ')' if 'projection_dim' in cell else ''} | "
            f"{cell.get('optimizer', '')} | {cell['count']} | {num(cell['rate'])} | "
            f"{'–' if official else num(cell.get('setup_seconds'), '.2f')} | "
            f"{num(cell['rate']) if official else num(cell.get('rate_with_setup'))} | "
            f"{'1' if official else num(own.get(cell['cell'] + '_vs_official'), '.1f')} | "
            f"{'1' if official else num(own.get(cell['cell'] + '_with_setup_vs_official'), '.1f')} | "
            f"{num(cell.get('tflops'), '.3g')} | {pct(cell.get('fraction_of_datasheet'))} | "
            f"{pct(cell.get('fraction_of_measured_matmul'))} | {num(cell.get('peak_memory_gib'), '.1f')} |"
        )
    lines += [
        "",
        "| model | stage | weights | rate | TFLOP/s | % bf16 datasheet | % bf16 matmul measured | "
        "weight reads (% copy measured) | peak GiB |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for cell in cells:
        if cell["status"] != "ok" or cell["unit"] == "candidates":
            continue
        weights = cell.get("weights", "bf16")
        reads = "–"
        if "weight_bytes_per_s" in cell:
            reads = f"{cell['weight_bytes_per_s'] / 1e9:.3g} GB/s ({pct(cell.get('fraction_of_measured_copy'))})"
        lines.append(
            f"| {cell['model']} | {cell['cell']} | {weights} | {format_rate(cell)} | {num(cell.get('tflops'))} | "
            f"{pct(cell.get('fraction_of_datasheet'))} | {pct(cell.get('fraction_of_measured_matmul'))} | "
            f"{reads} | {num(cell.get('peak_memory_gib'), '.1f')} |"
        )
    missing = [cell for cell in cells if cell["status"] != "ok"]
    if missing:
        lines += [""] + [
            f"- {cell['model']} {cell['cell']}: **{cell['status']}**: {cell.get('reason') or cell.get('error')}"
            for cell in missing
        ]
    if measured:
        lines += [
            "",
            f"Measured in the same run: bf16 matmul {measured.get('bf16_matmul_tflops')} TFLOP/s, fp32 matmul "
            f"{measured.get('fp32_matmul_tflops')} TFLOP/s (8192³, random data), device-to-device copy "
            f"{measured.get('copy_tb_per_s')} TB/s (bytes read + written).",
        ]
    return "\n".join(lines)


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", choices=sorted(SIZES), default="smoke")
    parser.add_argument("--device", default="auto", help="'auto', 'cpu', 'cuda' or 'cuda:N'")
    parser.add_argument(
        "--budget-s", type=float, default=420.0, help="cells that would start after this many seconds are skipped"
    )
    parser.add_argument("--models", nargs="*", default=None, help="only these models of the size (default: all)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=None, help="JSON path (default: bench/results/gpu-check-<device kind>.json)")
    parser.add_argument(
        "--markdown",
        default=None,
        metavar="JSON",
        help="print docs/benchmarks.md's tables from this report and exit (measures nothing)",
    )
    return parser


if __name__ == "__main__":
    from common.envs import apply_offline_defaults

    apply_offline_defaults()
    parsed = make_parser().parse_args()
    if parsed.markdown:
        print(render_markdown(json.loads(Path(parsed.markdown).read_text())))
    else:
        main(parsed)
