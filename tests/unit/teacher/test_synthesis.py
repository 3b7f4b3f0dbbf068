"""Synthesis with the real tiny teacher through the transformers backend.

What the tiny teacher happens to sample (how many of its samples parse, pass the filters and get an answer) depends
on its weights, which differ between machines and draws (``MONTESSORI_TEST_SEED``): the tests of real sampling
assert what holds for every outcome, and the kept-candidate path is proven on samples the teacher is forced to
write (:func:`forced_texts`: every other token's logit -inf, through the same ``model.generate`` call)."""

from __future__ import annotations

import itertools
from collections import Counter

import pytest
import torch

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
    """Whatever the teacher samples: every sample is kept or dropped with a reason, and every kept candidate is
    well-formed (how many are kept is the draw's; the forced test below proves candidates are kept)."""
    candidates, stats = synthesizer(backend, seed_rows).synthesize(prefix="probe", seed=3, num_prompts=4)
    assert stats.prompts == 4 and stats.samples == 16
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


#: 16 instructions that pass every filter and are far apart (ROUGE-L), one for each sample of 4 prompts x 4.
FORCED_INSTRUCTIONS = [
    "Explain how tides form along a coast",
    "List two facts about owls",
    "Describe the water cycle for a child",
    "Compare trains and buses for commuting",
    "Suggest three names for a bakery",
    "Summarise why bees matter to farms",
    "Give a recipe for lentil soup",
    "Outline the rules of chess briefly",
    "Name four planets and their moons",
    "Write a haiku about autumn rain",
    "Define inflation in plain words",
    "Translate good morning into Spanish",
    "Rank these fruits by sweetness: apple, lemon, mango",
    "Propose a weekly exercise plan for beginners",
    "Why do leaves change colour in October?",
    "Convert 5 miles into kilometres",
]


def forced_texts(backend: TransformersBackend, monkeypatch, instructions: list[str]) -> None:
    """Make the real backend's ``model.generate`` write given texts: a logits processor appended to the backend's
    own (after its presence penalty, before temperature and top-p) leaves one finite logit per row, the next token
    of that row's text, then EOS. Instruction samples (those with a stop string) take the next of ``instructions``
    (with its closing tag, where the stop string ends generation); answers take "Answer k." Tokenizing, sampling,
    stop strings and decoding are the backend's own; only the choice of each token is forced."""
    tokenizer, original = backend.tokenizer, backend.model.generate
    answers = itertools.count()
    queue = iter(instructions)

    def generate(*args, logits_processor, **kwargs):
        state: dict = {}
        writes_instructions = bool(kwargs.get("stop_strings"))  # instruction samples stop at </instruction>

        def force(input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
            if not state:
                state["start"] = input_ids.shape[1]
                texts = [
                    f"{next(queue)}</instruction>" if writes_instructions else f"Answer {next(answers)}."
                    for _ in range(input_ids.shape[0])
                ]
                state["ids"] = [tokenizer(t, add_special_tokens=False)["input_ids"] for t in texts]
            step = input_ids.shape[1] - state["start"]
            forced = torch.full_like(scores, float("-inf"))
            for row, ids in enumerate(state["ids"]):
                forced[row, ids[step] if step < len(ids) else tokenizer.eos_token_id] = 0.0
            return forced

        logits_processor.append(force)
        return original(*args, logits_processor=logits_processor, **kwargs)

    monkeypatch.setattr(backend.model, "generate", generate)


def test_forced_samples_become_candidates_with_their_group_prompt_and_answer(tiny_teacher, seed_rows, monkeypatch):
    backend = TransformersBackend(ModelRef(str(tiny_teacher)))  # its own: the patch stays with this test
    forced_texts(backend, monkeypatch, FORCED_INSTRUCTIONS)
    config = {"max_new_tokens": 40, "response_max_new_tokens": 16}
    candidates, stats = synthesizer(backend, seed_rows, **config).synthesize(prefix="probe", seed=3, num_prompts=4)
    assert (stats.prompts, stats.samples, stats.kept, sum(stats.dropped.values())) == (4, 16, 16, 0)
    assert [c.instruction for c in candidates] == FORCED_INSTRUCTIONS  # in sample order, through the real decode
    assert [c.raw_sample for c in candidates] == [f"{i}</instruction>" for i in FORCED_INSTRUCTIONS]  # stop kept
    assert [c.response for c in candidates] == [f"Answer {k}." for k in range(16)]
    assert Counter(c.group_id for c in candidates) == {f"probe-g{g:04d}": 4 for g in range(4)}
    for cand in candidates:
        assert cand.prompt.endswith("<instruction>") and cand.id.startswith(cand.group_id)
        assert cand.sampling["n"] == 4 and cand.sampling["stop"] == ["</instruction>"]
    assert len({c.prompt for c in candidates}) == 4  # one prompt per group, four groups
