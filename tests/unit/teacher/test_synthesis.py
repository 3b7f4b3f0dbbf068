"""Synthesis with the real tiny teacher through the transformers backend."""

from __future__ import annotations

import pytest

from common.models import ModelRef
from services.teacher.backend import TransformersBackend
from services.teacher.config import SynthesisConfig
from services.teacher.prompts import seed_examples
from services.teacher.synthesis import Synthesizer


@pytest.fixture(scope="module")
def backend(tiny_teacher):
    return TransformersBackend(ModelRef(str(tiny_teacher)))


def synthesizer(backend, seed_rows, **overrides):
    config = SynthesisConfig(**{"max_new_tokens": 40, "response_max_new_tokens": 16, **overrides})
    return Synthesizer(backend, config, seed_examples(seed_rows), teacher_label="teacher-r0")


def test_candidates_keep_their_group_prompt_and_sampling(backend, seed_rows):
    candidates, stats = synthesizer(backend, seed_rows).synthesize(prefix="probe", seed=3, num_prompts=4)
    assert stats.prompts == 4 and stats.samples == 16
    assert candidates, "the tiny teacher should write some well-formed instructions"
    assert stats.kept == len(candidates) and stats.kept + sum(stats.dropped.values()) == 16
    for cand in candidates:
        assert cand.prompt.endswith("<instruction>")  # completion style: the DPO prompt is exactly this text
        assert cand.raw_sample.endswith("</instruction>")
        assert cand.group_id.startswith("probe-g") and cand.id.startswith(cand.group_id)
        assert (
            cand.sampling["n"] == 4 and cand.sampling["temperature"] == 1.0 and cand.sampling["presence_penalty"] == 1.0
        )
        assert cand.response and cand.teacher == "teacher-r0"
    by_group = {}
    for cand in candidates:
        by_group.setdefault(cand.group_id, set()).add(cand.prompt)
    assert all(len(prompts) == 1 for prompts in by_group.values())


def test_same_seed_same_candidates(backend, seed_rows):
    first, _ = synthesizer(backend, seed_rows).synthesize(prefix="p", seed=5, num_prompts=2)
    second, _ = synthesizer(backend, seed_rows).synthesize(prefix="p", seed=5, num_prompts=2)
    assert [c.to_dict() for c in first] == [c.to_dict() for c in second]


def test_target_size_is_reached_or_capped(backend, seed_rows):
    candidates, stats = synthesizer(backend, seed_rows).synthesize(prefix="train", seed=7, target=5)
    assert len(candidates) <= 5
    assert stats.prompts <= -(-5 * 4 // 4)  # at most target * factor / n prompts


def test_chat_style_prompt_goes_through_the_chat_template(backend, seed_rows):
    candidates, stats = synthesizer(backend, seed_rows, prompt_style="chat").write_instructions(
        prefix="c", seed=1, num_prompts=1
    )
    assert stats.samples == 4
    prompt = synthesizer(backend, seed_rows, prompt_style="chat")
    text = prompt.backend.chat_prompt("hello")
    assert text.startswith("<|im_start|>user\nhello") and text.endswith("<|im_start|>assistant\n")
