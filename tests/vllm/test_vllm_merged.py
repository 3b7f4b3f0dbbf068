"""Merged serving (``vllm.serving: merged``, CPU build): a teacher version's chain merged into a copy of the base
weights and served by an engine of its own with LoRA off, one engine at a time. Each engine start takes about
30 s here, so the tests share one backend and run in order, with six starts: r1 loaded; r2 loaded, the base,
r2 again; r1 reloaded from its folder; a corrupted folder refused."""

from __future__ import annotations

import argparse

import pytest
import torch

from common.errors import FailedPrecondition, InvalidArgument, NotFound
from common.models import ModelRef, load_model
from services.teacher import adapters as adapters_module
from services.teacher.adapters import MERGE, chain_digest, merge_chain
from services.teacher.backend import SamplingParams
from services.teacher.canary import reference_logprobs
from services.teacher.config import VLLMSettings
from services.teacher.main import service_config
from services.teacher.vllm_backend import MergedEngine, VLLMBackends

TOKENS = 12
TOLERANCE = 0.05  # the canary's for a float32 engine


@pytest.fixture(scope="module")
def backends(tmp_path_factory):
    # fp32 so that the canary and the comparisons below hold the engine to the tight tolerance.
    backends = VLLMBackends(
        VLLMSettings(dtype="float32", serving="merged", max_model_len=1024, canary_tokens=8),
        cache_dir=tmp_path_factory.mktemp("cache"),
    )
    yield backends
    backends.close()


def _folder(backends, ref: ModelRef):
    return backends.cache_dir / "vllm-merged" / f"{chain_digest(ref.adapters)[:32]}-float32"


def _matches_transformers(backends, ref: ModelRef, version: str | None) -> str:
    """The served greedy text and log-probabilities of ``version`` are transformers+peft's for ``ref``."""
    backend = backends.get(ref, version=version)
    prompt = backend.chat_prompt("Name a color.")
    text = backend.generate([prompt], SamplingParams(n=1, temperature=0.0, max_new_tokens=TOKENS))[0][0]
    tokenizer = backends.engine.tokenizer
    ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    model = load_model(ref, field="teacher")
    with torch.inference_mode():
        expected = model.generate(torch.tensor([ids]), max_new_tokens=TOKENS, do_sample=False)[0, len(ids) :].tolist()
    assert text == tokenizer.decode(expected, skip_special_tokens=True)
    served_ids, served = backends.engine.greedy_logprobs(ids, TOKENS, version=version)
    assert served_ids[: len(expected)] == expected  # generate stops at the end of text; the canary's request does not
    diffs = [abs(a - b) for a, b in zip(served, reference_logprobs(model, ids, served_ids))]
    assert max(diffs) < TOLERANCE, diffs
    return text


def test_a_merged_version_is_served_with_lora_off_and_matches_transformers_peft(backends, base_model, adapters):
    ref = ModelRef(base_model, (adapters[0],))
    info = backends.load_version("m-r1", ref)
    assert info["serving"] == "merged" and info["backend"] == "vllm" and info["rank"] == 8 and info["exact"]
    assert info["canary"]["passed"] and info["canary"]["max_abs_diff"] < 1e-3
    assert isinstance(backends.engine, MergedEngine)
    engine = backends.engine.engine
    assert engine.merged_version == "m-r1" and not engine.lora
    assert engine.llm.llm_engine.vllm_config.lora_config is None  # LoRA disabled in the engine
    assert (_folder(backends, ref) / MERGE).is_file()
    _matches_transformers(backends, ref, "m-r1")
    assert backends.engine.engine is engine  # asking for the version it serves restarts nothing
    with pytest.raises(NotFound):
        backends.engine.engine.generate(["x"], SamplingParams(), version="m-r2")  # one model per engine


def test_switching_versions_and_the_base_restarts_the_engine_and_each_matches(backends, base_model, adapters):
    first = backends.engine.engine
    r2 = ModelRef(base_model, (adapters[0], adapters[1]))
    info = backends.load_version("m-r2", r2)
    assert info["rank"] == 16 and info["canary"]["passed"] and info["adapter_digest"] == chain_digest(r2.adapters)
    second = backends.engine.engine
    assert second is not first and second.merged_version == "m-r2"
    r2_backend = backends.get(r2, version="m-r2")
    served = _matches_transformers(backends, r2, "m-r2")

    base = _matches_transformers(backends, ModelRef(base_model), None)
    assert backends.engine.engine is not second and backends.engine.engine.merged_version is None
    assert base != served

    # A backend handed out before the switch still serves its own version: the engine restarts on it.
    prompt = r2_backend.chat_prompt("Name a color.")
    again = r2_backend.generate([prompt], SamplingParams(n=1, temperature=0.0, max_new_tokens=TOKENS))[0][0]
    assert again == served and backends.engine.engine.merged_version == "m-r2"
    assert [v["name"] for v in backends.versions()] == ["m-r1", "m-r2"]


def test_a_reloaded_version_reuses_its_merged_folder(backends, base_model, adapters, monkeypatch):
    ref = ModelRef(base_model, (adapters[0],))
    written = (_folder(backends, ref) / MERGE).stat().st_mtime_ns
    backends.unload_version("m-r1")
    assert "m-r1" not in [v["name"] for v in backends.versions()]
    with pytest.raises(NotFound):
        backends.engine.generate(["x"], SamplingParams(), version="m-r1")

    monkeypatch.setattr(adapters_module, "load_model", lambda *a, **k: pytest.fail("the chain was merged again"))
    info = backends.load_version("m-r1", ref)
    assert info["canary"]["passed"] and backends.engine.engine.merged_version == "m-r1"
    assert (_folder(backends, ref) / MERGE).stat().st_mtime_ns == written

    backends.unload_version("m-r1")  # the version it serves: the engine stops, its memory back now
    assert backends.engine.engine is None


def test_canary_refuses_a_corrupted_merged_folder_and_deletes_it(backends, base_model, adapters):
    ref = ModelRef(base_model, (adapters[2],))
    # Plant a corrupted copy where the merged folder of this chain is kept (as a stale or tampered cache entry
    # would be): complete, same shapes, wrong weights.
    folder = merge_chain(ref, _folder(backends, ref), dtype="float32")
    from safetensors.torch import load_file, save_file

    weights = load_file(str(folder / "model.safetensors"))
    save_file(
        {k: v * 1.5 if "q_proj" in k else v for k, v in weights.items()},
        str(folder / "model.safetensors"),
        metadata={"format": "pt"},
    )
    with pytest.raises(FailedPrecondition, match="canary refused teacher version 'm-bad'") as caught:
        backends.load_version("m-bad", ref)
    assert caught.value.field == "teacher_version"
    assert not folder.exists()
    assert "m-bad" not in [v["name"] for v in backends.versions()] and backends.engine.engine is None


def test_the_serving_setting_comes_from_teacher_config_and_a_bad_value_is_refused(tmp_path):
    with pytest.raises(InvalidArgument) as caught:
        VLLMSettings(serving="lora")
    assert caught.value.field == "serving"
    config = tmp_path / "teacher.yaml"
    args = argparse.Namespace(teacher_config=str(config), backend=None, dtype=None, device=None)
    config.write_text("backend: vllm\nvllm: {serving: merged}\n")
    assert service_config(args).vllm.serving == "merged"
    config.write_text("backend: vllm\nvllm: {serving: merge}\n")
    with pytest.raises(InvalidArgument) as caught:
        service_config(args)
    assert caught.value.field == "teacher-config.vllm.serving"
