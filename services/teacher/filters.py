"""Parsing, normalisation, filtering and ROUGE-L de-duplication of instruction samples (METHOD.md stage 1)."""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from rouge_score import rouge_scorer

from services.teacher.prompts import CLOSE_TAG, OPEN_TAG

_TAGGED = re.compile(re.escape(OPEN_TAG) + r"(.*?)" + re.escape(CLOSE_TAG), re.DOTALL)
_BLOCKED = re.compile(r"\b(images?|graphs?|pictures?|files?|maps?|draw|plot|go to)\b", re.IGNORECASE)
_INPUT_TAGS = re.compile(r"</?input>", re.IGNORECASE)
MIN_CHARS, MAX_CHARS = 5, 400


def parse_instruction(sample: str) -> str | None:
    """Text inside the last complete ``<instruction>...</instruction>``; ``None`` when there is none."""
    matches = _TAGGED.findall(sample)
    return matches[-1] if matches else None


def normalise(text: str) -> str:
    """Collapse whitespace, strip, capitalise the first letter."""
    text = " ".join(text.split()).strip()
    return text[:1].upper() + text[1:]


def rejection_reason(text: str) -> str | None:
    """Why a normalised instruction is dropped by the method's filters, or ``None`` to keep it."""
    if len(text) <= MIN_CHARS:
        return "too_short"
    if len(text) > MAX_CHARS:
        return "too_long"
    if _BLOCKED.search(text):
        return "blocked_word"
    first = text[0]
    if not first.isascii() or not first.isalnum():
        return "bad_start"
    return None


def clean(sample: str) -> tuple[str | None, str | None]:
    """(instruction, None) for a usable sample or (None, reason) in the method's order."""
    parsed = parse_instruction(sample)
    if parsed is None:
        return None, "no_tag"
    text = normalise(_INPUT_TAGS.sub(" ", parsed))
    reason = rejection_reason(text)
    return (None, reason) if reason else (text, None)


@dataclass
class Deduplicator:
    """Keeps instructions whose ROUGE-L F1 with every reference and every kept one is <= threshold."""

    threshold: float
    references: list[str] = field(default_factory=list)
    kept: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=False)

    def offer(self, instruction: str) -> bool:
        """Keep ``instruction`` if it is novel enough; returns whether it was kept."""
        for other in (*self.references, *self.kept):
            if self._scorer.score(other, instruction)["rougeL"].fmeasure > self.threshold:
                return False
        self.kept.append(instruction)
        return True
