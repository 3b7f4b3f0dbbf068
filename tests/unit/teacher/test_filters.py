"""Parsing, normalisation, filters and ROUGE-L de-duplication (METHOD.md stage 1)."""

from __future__ import annotations

import random

import torch

from services.teacher.backend import PresencePenalty
from services.teacher.filters import Deduplicator, clean, normalise, parse_instruction
from services.teacher.prompts import OPEN_TAG, pick_examples, synthesis_prompt


def test_parse_takes_the_last_complete_tag():
    assert parse_instruction("<instruction>a</instruction> x <instruction>b c</instruction> tail") == "b c"
    assert parse_instruction("no tags here") is None
    assert parse_instruction("<instruction>unterminated") is None


def test_normalise_collapses_whitespace_and_capitalises():
    assert normalise("  write   a\n poem ") == "Write a poem"


def test_filters_in_the_methods_order():
    tagged = lambda text: f"<instruction>{text}</instruction>"  # noqa: E731
    assert clean(tagged("Hi")) == (None, "too_short")
    assert clean(tagged("x" * 401)) == (None, "too_long")
    assert clean(tagged("Describe this image of a cat"))[1] == "blocked_word"
    assert clean(tagged("Go to the store and buy milk"))[1] == "blocked_word"
    assert clean(tagged("Open the files folder"))[1] == "blocked_word"
    assert clean(tagged("Profile the mapping code"))[1] is None  # word boundaries: 'file' in 'Profile' is fine
    assert clean(tagged("- list three fruits"))[1] == "bad_start"
    assert clean(tagged("Ébauche a plan for the week"))[1] == "bad_start"
    assert clean(tagged("summarise <input>the text</input> below")) == ("Summarise the text below", None)


def test_rouge_l_deduplication_against_seeds_and_kept():
    dedup = Deduplicator(0.7, references=["Write a short poem about the sea"])
    assert not dedup.offer("Write a short poem about the sea at night")  # close to a seed
    assert dedup.offer("Explain how vaccines train the immune system")
    assert not dedup.offer("Explain how vaccines train the immune system quickly")  # close to a kept one
    assert dedup.offer("List three uses of baking soda")
    assert dedup.kept == ["Explain how vaccines train the immune system", "List three uses of baking soda"]


def test_examples_mix_in_generated_instructions_once_there_are_enough():
    seeds = [f"seed {i}" for i in range(20)]
    rng = random.Random(0)
    assert all(e.startswith("seed") for e in pick_examples(seeds, ["gen 1"], total=8, from_generated=2, rng=rng))
    mixed = pick_examples(seeds, ["gen 1", "gen 2", "gen 3"], total=8, from_generated=2, rng=rng)
    assert len(mixed) == 8 and sum(e.startswith("gen") for e in mixed) == 2


def test_completion_prompt_ends_in_an_open_tag():
    prompt = synthesis_prompt(["A", "B"], style="completion")
    assert prompt.endswith(f"<instruction>B</instruction>\n{OPEN_TAG}")


def test_presence_penalty_only_touches_generated_tokens():
    scores = torch.zeros(1, 10)
    ids = torch.tensor([[1, 2, 3, 7, 7]])  # prompt = first 3 tokens
    out = PresencePenalty(1.0, prompt_length=3)(ids, scores)
    assert out[0, 7] == -1.0  # once, however often it occurred
    assert out[0, 1] == 0.0 and out[0, 2] == 0.0  # prompt tokens are not penalised
