"""Instruction synthesis and answering (METHOD.md stages 1-2): the teacher's core, no transport."""

from __future__ import annotations

import random
from collections import Counter
from dataclasses import asdict, dataclass, field

from common.chat import instruction_text
from common.errors import FailedPrecondition
from common.progress import Progress, no_progress
from services.teacher.backend import GenerationBackend, SamplingParams
from services.teacher.config import SynthesisConfig
from services.teacher.filters import Deduplicator, clean
from services.teacher.prompts import CLOSE_TAG, pick_examples, sample_text, synthesis_prompt


@dataclass
class Candidate:
    """One synthetic training example and where it came from."""

    id: str
    group_id: str
    prompt: str
    raw_sample: str
    instruction: str
    response: str = ""
    sampling: dict = field(default_factory=dict)
    response_sampling: dict = field(default_factory=dict)
    teacher: str = ""

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, row: dict) -> Candidate:
        return cls(**{k: row[k] for k in cls.__dataclass_fields__ if k in row})


@dataclass
class SynthesisStats:
    """What happened to the samples (for the manifest)."""

    prompts: int = 0
    samples: int = 0
    kept: int = 0
    dropped: Counter = field(default_factory=Counter)

    def to_dict(self) -> dict:
        return {"prompts": self.prompts, "samples": self.samples, "kept": self.kept, "dropped": dict(self.dropped)}


class Synthesizer:
    """Writes instruction candidates in prompt groups, then answers them, with one backend."""

    def __init__(
        self, backend: GenerationBackend, config: SynthesisConfig, seed_instructions: list[str], *, teacher_label: str
    ):
        """``seed_instructions``: the seeds' example texts (instruction and input, :func:`prompts.seed_examples`);
        they are shown in context and every sample is de-duplicated against them."""
        if not seed_instructions:
            raise FailedPrecondition("seed set is empty", field="data.seed_path")
        self.backend = backend
        self.config = config
        self.seeds = seed_instructions
        self.teacher_label = teacher_label

    def _instruction_params(self, seed: int) -> SamplingParams:
        c = self.config
        stop = (CLOSE_TAG,) if c.prompt_style == "completion" else ()
        return SamplingParams(
            n=c.samples_per_prompt,
            temperature=c.temperature,
            top_p=c.top_p,
            presence_penalty=c.presence_penalty,
            max_new_tokens=c.max_new_tokens,
            stop=stop,
            seed=seed,
        )

    def write_instructions(
        self,
        *,
        prefix: str,
        seed: int,
        num_prompts: int | None = None,
        target: int | None = None,
        progress: Progress = no_progress,
    ) -> tuple[list[Candidate], SynthesisStats]:
        """Candidates (without responses) from ``num_prompts`` prompts, or from as many prompts as it takes to keep
        ``target``.

        Every sample of a prompt is kept as its own candidate (a prompt group), so that
        preference pairs can be formed inside the group.
        """
        c = self.config
        rng = random.Random(seed)
        dedup = Deduplicator(c.rouge_threshold, references=list(self.seeds))
        stats = SynthesisStats()
        candidates: list[Candidate] = []
        max_prompts = (
            num_prompts
            if num_prompts is not None
            else max(1, -(-target * c.max_prompt_attempts_factor // c.samples_per_prompt))
        )
        goal = num_prompts if num_prompts is not None else target
        while stats.prompts < max_prompts and (num_prompts is not None or len(candidates) < target):
            batch = min(c.prompt_batch_size, max_prompts - stats.prompts)
            prompts = [
                synthesis_prompt(
                    pick_examples(
                        self.seeds,
                        dedup.kept,
                        total=c.examples_per_prompt,
                        from_generated=c.generated_examples_per_prompt,
                        rng=rng,
                    ),
                    style=c.prompt_style,
                    chat_template=self.backend.chat_prompt,
                )
                for _ in range(batch)
            ]
            params = self._instruction_params(seed * 1_000_003 + stats.prompts)
            for offset, (prompt, samples) in enumerate(zip(prompts, self.backend.generate(prompts, params))):
                group_id = f"{prefix}-g{stats.prompts + offset:04d}"
                for index, raw in enumerate(samples):
                    stats.samples += 1
                    instruction, reason = clean(sample_text(raw, style=c.prompt_style))
                    if instruction is not None and not dedup.offer(instruction):
                        instruction, reason = None, "rouge_duplicate"
                    if instruction is None:
                        stats.dropped[reason] += 1
                        continue
                    candidates.append(
                        Candidate(
                            id=f"{group_id}-s{index}",
                            group_id=group_id,
                            prompt=prompt,
                            raw_sample=raw,
                            instruction=instruction,
                            sampling={**params.to_dict(), "stop": list(params.stop)},
                            teacher=self.teacher_label,
                        )
                    )
            stats.prompts += batch
            done = stats.prompts if num_prompts is not None else min(len(candidates), target)
            progress(f"{prefix}: instructions", done, goal, {"kept": len(candidates)})
        if target is not None:
            candidates = candidates[:target]
        stats.kept = len(candidates)
        progress(f"{prefix}: instructions", goal, goal, {"kept": len(candidates)})
        return candidates, stats

    def answer(
        self, candidates: list[Candidate], *, seed: int, prefix: str, progress: Progress = no_progress
    ) -> list[Candidate]:
        """Fill in each candidate's zero-shot response (chat template, METHOD.md stage 2)."""
        c = self.config
        size = c.response_batch_size
        for start in range(0, len(candidates), size):
            chunk = candidates[start : start + size]
            params = SamplingParams(
                n=1,
                temperature=c.response_temperature,
                top_p=c.response_top_p,
                presence_penalty=c.response_presence_penalty,
                max_new_tokens=c.response_max_new_tokens,
                seed=seed * 1_000_003 + start,
            )
            prompts = [self.backend.chat_prompt(instruction_text(cand.instruction)) for cand in chunk]
            for cand, (response,) in zip(chunk, self.backend.generate(prompts, params)):
                cand.response = response.strip()
                cand.response_sampling = {**params.to_dict(), "stop": []}
            progress(f"{prefix}: responses", min(start + size, len(candidates)), len(candidates))
        return [cand for cand in candidates if cand.response]

    def synthesize(
        self,
        *,
        prefix: str,
        seed: int,
        num_prompts: int | None = None,
        target: int | None = None,
        progress: Progress = no_progress,
    ) -> tuple[list[Candidate], SynthesisStats]:
        """Instructions then responses; candidates with an empty response are dropped."""
        candidates, stats = self.write_instructions(
            prefix=prefix, seed=seed, num_prompts=num_prompts, target=target, progress=progress
        )
        answered = self.answer(candidates, seed=seed, prefix=prefix, progress=progress)
        stats.dropped["empty_response"] += len(candidates) - len(answered)
        stats.kept = len(answered)
        return answered, stats
