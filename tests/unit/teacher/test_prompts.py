"""The synthesis prompt as the official code builds it: seed inputs, the preamble, response sampling."""

from __future__ import annotations

import json

from common.artifacts import LocalArtifactStore
from common.chat import instruction_text
from common.jsonl import read_jsonl
from common.models import ModelRef
from services.teacher.backend import GenerationBackend, SamplingParams
from services.teacher.config import SynthesisConfig
from services.teacher.filters import clean
from services.teacher.prompts import CHAT_CLOSING, PREAMBLE, sample_text, seed_examples, synthesis_prompt
from services.teacher.synthesis import Candidate
from services.teacher.tasks import generate

SEEDS = [
    {
        "instruction": "Summarise the paragraph in one sentence.",
        "input": "Rivers carry sediment to the sea.",
        "output": "x",
    },
    {"instruction": "Translate the sentence into French.", "input": "The library opens at nine.", "output": "x"},
    {"instruction": "Name three uses of baking soda.", "input": "", "output": "x"},
]
INSTRUCTIONS = ["Explain how tides form</instruction>", "List two facts about owls</instruction>"]


class RecordingBackend(GenerationBackend):
    """Answers every prompt with fixed texts and records what it was asked (no model)."""

    def __init__(self):
        self.calls: list[tuple[list[str], SamplingParams]] = []

    def generate(self, prompts: list[str], params: SamplingParams) -> list[list[str]]:
        self.calls.append((list(prompts), params))
        if params.n > 1:  # instruction sampling: n samples per prompt
            return [[INSTRUCTIONS[i % len(INSTRUCTIONS)] for i in range(params.n)] for _ in prompts]
        return [["An answer."] for _ in prompts]

    def chat_prompt(self, user_text: str) -> str:
        return f"<user>{user_text}</user><assistant>"

    @property
    def context_length(self) -> int:
        return 4096


def run_generate(tmp_path, **overrides):
    tmp_path.mkdir(parents=True, exist_ok=True)
    seed_path = tmp_path / "seed.jsonl"
    seed_path.write_text("".join(json.dumps(row) + "\n" for row in SEEDS))
    backend = RecordingBackend()
    config = SynthesisConfig(
        **{"examples_per_prompt": len(SEEDS), "generated_examples_per_prompt": 0, "samples_per_prompt": 2, **overrides}
    )
    store = LocalArtifactStore(tmp_path / "store")
    generate(
        store,
        "run/probe-data",
        backend=backend,
        teacher=ModelRef(str(tmp_path / "teacher")),
        teacher_label="t0",
        seed_path=seed_path,
        config=config,
        seed=0,
        num_prompts=1,
    )
    rows = read_jsonl(tmp_path / "store" / "run" / "probe-data" / "candidates.jsonl", required=("id",))
    return backend, [Candidate.from_dict(r) for r in rows]


def test_seed_inputs_are_in_the_prompt_joined_as_the_student_sees_them(tmp_path):
    backend, candidates = run_generate(tmp_path)
    (prompt,), _ = backend.calls[0]
    for row in SEEDS:  # every seed is an example here; those with an input show it after a blank line
        assert f"<instruction>{instruction_text(row['instruction'], row['input'])}</instruction>" in prompt
    assert (
        "<instruction>Summarise the paragraph in one sentence.\n\nRivers carry sediment to the sea.</instruction>"
        in prompt
    )
    assert "<instruction>Name three uses of baking soda.</instruction>" in prompt
    assert candidates and all(c.prompt == prompt for c in candidates)  # the DPO prompt is that text


def test_seed_examples_use_the_one_project_wide_join():
    assert seed_examples(SEEDS) == [instruction_text(r["instruction"], r["input"]) for r in SEEDS]
    assert seed_examples([{"instruction": "Do it.", "input": "  "}]) == ["Do it."]  # blank input: no join


def test_responses_are_sampled_with_the_presence_penalty(tmp_path):
    backend, candidates = run_generate(tmp_path)
    response_params = [params for _, params in backend.calls if params.n == 1]
    assert response_params and all(p.presence_penalty == 1.0 for p in response_params)  # the paper's default
    assert all(p.temperature == 0.6 and p.top_p == 0.9 for p in response_params)
    assert candidates and all(c.response_sampling["presence_penalty"] == 1.0 for c in candidates)
    backend, _ = run_generate(tmp_path / "other", response_presence_penalty=0.25)
    assert {p.presence_penalty for _, p in backend.calls if p.n == 1} == {0.25}


def test_the_preamble_asks_for_an_optional_input_and_chat_for_a_reason():
    assert "input" in PREAMBLE and "<instruction>" in PREAMBLE and "</instruction>" in PREAMBLE
    completion = synthesis_prompt(["A", "B"], style="completion")
    assert completion.startswith(PREAMBLE) and CHAT_CLOSING not in completion
    chat = synthesis_prompt(["A", "B"], style="chat", chat_template=lambda text: f"<u>{text}</u>")
    assert chat == f"<u>{PREAMBLE}\n\n<instruction>A</instruction>\n<instruction>B</instruction>\n\n{CHAT_CLOSING}</u>"


def test_a_sample_with_an_input_parses_as_one_line_and_a_reason_is_skipped():
    # Completion style: the input follows the instruction inside the tag; the method's whitespace
    # normalisation joins them on one line (as in the official code).
    raw = "Summarise the paragraph.\n\nBees dance to show where flowers are.</instruction>"
    assert clean(sample_text(raw, style="completion")) == (
        "Summarise the paragraph. Bees dance to show where flowers are.",
        None,
    )
    # Chat style: a short reason before the tag, as the official prompt asks for; the last tag is the instruction.
    raw = (
        "A summary task needs its text, so I add one.\n"
        "<instruction>Summarise this.\n\nTides rise twice a day.</instruction>"
    )
    assert clean(sample_text(raw, style="chat")) == ("Summarise this. Tides rise twice a day.", None)
