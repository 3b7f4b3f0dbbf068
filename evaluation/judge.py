"""Pairwise judging of two students, AlpacaEval style: the win rate of student A against student B.

Both students answer the same held-out instructions (greedy, through each student's own chat
template, exactly as the project formats student prompts); a judge model then reads the
instruction with the two answers and says which is better. Every instruction is judged in both
orders (A's answer shown first, then B's shown first), because small and large judges alike
prefer one position. A verdict is ``first``, ``second``, ``tie`` or ``unparseable`` (the judge
named none of ``1``, ``2`` and ``tie``; it counts as a tie). Per instruction, A's score is the
mean over the two orders of 1 (A preferred), 0.5 (tie) or 0 (B preferred), so ties and
order-inconsistent verdicts count half; the win rate is the mean score over instructions, with a
95% percentile bootstrap interval (:func:`common.stats.bootstrap_mean`), the share of
instructions whose two orders agree, and per-category win rates when rows carry ``category``.

The judge is either a local model folder (:class:`LocalJudge`, generated with the teacher's
transformers backend) or any OpenAI-compatible chat-completions endpoint (:class:`EndpointJudge`;
a vLLM server is one). Decoding is greedy (temperature 0) for answers and verdicts, so a rerun
gives the same figures.

**A 135M judge is not a meaningful judge.** The tiny models and SmolLM2-135M used by the tests
and the demo check the mechanics only: at that size the verdicts are close to a fixed position
preference, and the win rate says nothing about which student is better. To measure, point the
judge at a strong model behind an OpenAI-compatible server, e.g. a vLLM server
(``vllm serve <model>`` on a GPU host): ``montessori judge --a A --b B --judge-endpoint
http://host:8000/v1 --judge-endpoint-model <name>`` (an API key, if the server wants one, is read
from ``MONTESSORI_JUDGE_API_KEY``).
"""

from __future__ import annotations

import json
import re
import urllib.error
import urllib.request
from abc import ABC, abstractmethod
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from common.chat import instruction_text
from common.config import check, field
from common.errors import InvalidArgument, Unavailable
from common.models import ModelRef, load_tokenizer
from common.stats import bootstrap_mean
from services.teacher.backend import SamplingParams, TransformersBackend

Verdict = Literal["first", "second", "tie", "unparseable"]

#: The question put to the judge: one user turn through the judge's chat template (or the endpoint's).
JUDGE_PROMPT = (
    "You compare two responses to the same instruction. Decide which response follows the instruction "
    "better: more helpful, correct and relevant. Do not let the order of the responses or their length "
    "decide.\n\n"
    "### Instruction\n{instruction}\n\n"
    "### Response 1\n{first}\n\n"
    "### Response 2\n{second}\n\n"
    "Which response is better? Answer with 1, 2 or tie."
)

#: The first stand-alone "1", "2" or "tie" in the judge's output ("12", "tied" or "1st" are not verdicts).
_VERDICT = re.compile(r"(?<![A-Za-z0-9])(1|2|tie)(?![A-Za-z0-9])", re.IGNORECASE)

#: Bootstrap settings of the reported interval (fixed: the same verdicts give the same interval everywhere).
RESAMPLES, CONFIDENCE, BOOTSTRAP_SEED = 2000, 0.95, 0


@dataclass
class JudgeSettings:
    """Which judge compares the two students, and on how many held-out rows."""

    model: str | None = field(
        None, help="A local HF model folder used as the judge (exactly one of model and endpoint)."
    )
    endpoint: str | None = field(
        None,
        help="Base URL of an OpenAI-compatible API used as the judge, e.g. http://127.0.0.1:8000/v1 (a vLLM "
        "server); POSTs {endpoint}/chat/completions. The API key, if any, is read from MONTESSORI_JUDGE_API_KEY.",
    )
    endpoint_model: str | None = field(None, help="The model name the endpoint serves (required with endpoint).")
    max_rows: int | None = field(
        40, help="Held-out rows judged, spread evenly over the file (it is ordered by category); null: all rows."
    )
    max_new_tokens: int = field(128, help="Token budget of each student's answer (greedy).")
    verdict_max_new_tokens: int = field(8, help="Token budget of the judge's verdict (greedy).")
    batch_size: int = field(8, help="Prompts generated together (students' answers and the local judge's verdicts).")
    timeout_s: float = field(120.0, help="Endpoint judge: seconds one request may take before it is Unavailable.")

    def __post_init__(self) -> None:
        check(self.model is None or bool(self.model.strip()), "model", "must be a non-empty folder path or null")
        check(self.endpoint is None or bool(self.endpoint.strip()), "endpoint", "must be a non-empty URL or null")
        check(
            self.model is not None or self.endpoint is not None,
            "model",
            "exactly one of model (a local judge folder) and endpoint (an OpenAI-compatible URL) is required; "
            "none is set",
        )
        check(
            self.model is None or self.endpoint is None,
            "endpoint",
            "exactly one of model (a local judge folder) and endpoint (an OpenAI-compatible URL) is required; "
            "both are set",
        )
        if self.endpoint is not None:
            check(
                self.endpoint.startswith(("http://", "https://")),
                "endpoint",
                f"must be an http:// or https:// URL, got {self.endpoint!r}",
            )
            check(
                bool(self.endpoint_model and self.endpoint_model.strip()),
                "endpoint_model",
                "names the model the endpoint serves; required with endpoint",
            )
        check(self.max_rows is None or self.max_rows >= 1, "max_rows", "must be >= 1 or null (all rows)")
        check(1 <= self.max_new_tokens <= 4096, "max_new_tokens", "must be in 1..4096")
        check(1 <= self.verdict_max_new_tokens <= 256, "verdict_max_new_tokens", "must be in 1..256")
        check(1 <= self.batch_size <= 256, "batch_size", "must be in 1..256")
        check(0 < self.timeout_s <= 3600, "timeout_s", "must be in (0, 3600]")


def judge_prompt(instruction: str, first: str, second: str) -> str:
    """The judge's user turn: the instruction (with its input) and two responses, numbered 1 and 2."""
    return JUDGE_PROMPT.format(instruction=instruction, first=first, second=second)


def parse_verdict(text: str) -> Verdict:
    """``first``/``second``/``tie`` from the first stand-alone 1, 2 or tie (any case) in ``text``; else
    ``unparseable``."""
    match = _VERDICT.search(text)
    if match is None:
        return "unparseable"
    return {"1": "first", "2": "second"}.get(match.group(1).lower(), "tie")


def score_for_first(verdict: Verdict) -> float:
    """The score of the response shown first: 1 preferred, 0 not, 0.5 for a tie or no verdict."""
    return {"first": 1.0, "second": 0.0}.get(verdict, 0.5)


class Judge(ABC):
    """Answers judge prompts (user turns) with short free text; greedy, so the same prompts give the same texts."""

    @abstractmethod
    def complete(self, user_texts: list[str], *, max_new_tokens: int) -> list[str]:
        """One completion per user turn, in order."""

    @abstractmethod
    def describe(self) -> dict:
        """What judged (recorded with the figures; never a secret)."""


class LocalJudge(Judge):
    """A local model folder as judge, through the teacher's transformers backend and the folder's chat template."""

    def __init__(self, folder: str | Path, *, batch_size: int = 8, dtype: str = "float32"):
        self.folder = str(folder)
        self.batch_size = batch_size
        self.backend = TransformersBackend(ModelRef(self.folder), field="judge.model", dtype=dtype)

    def complete(self, user_texts: list[str], *, max_new_tokens: int) -> list[str]:
        params = SamplingParams(n=1, temperature=0.0, max_new_tokens=max_new_tokens)
        prompts = [self.backend.chat_prompt(text) for text in user_texts]
        texts: list[str] = []
        for start in range(0, len(prompts), self.batch_size):
            texts.extend(
                samples[0] for samples in self.backend.generate(prompts[start : start + self.batch_size], params)
            )
        return texts

    def describe(self) -> dict:
        return {"kind": "local", "model": self.folder}


class EndpointJudge(Judge):
    """An OpenAI-compatible ``/chat/completions`` API as judge (one request per prompt, temperature 0).

    A hand-written client on ``urllib``: the call is one JSON POST, and the project takes on no HTTP or
    OpenAI client dependency for an optional evaluation hook.
    """

    def __init__(self, base_url: str, model: str, api_key: str | None = None, *, timeout_s: float = 120.0):
        self.url = base_url.rstrip("/") + "/chat/completions"
        self.base_url = base_url
        self.model = model
        self._api_key = api_key or None
        self.timeout_s = timeout_s

    def complete(self, user_texts: list[str], *, max_new_tokens: int) -> list[str]:
        return [self._complete_one(text, max_new_tokens) for text in user_texts]

    def describe(self) -> dict:
        return {"kind": "endpoint", "endpoint": self.base_url, "model": self.model}

    def _complete_one(self, user_text: str, max_new_tokens: int) -> str:
        body = json.dumps(
            {
                "model": self.model,
                "messages": [{"role": "user", "content": user_text}],
                "temperature": 0,
                "max_tokens": max_new_tokens,
            }
        ).encode()
        headers = {"Content-Type": "application/json", "Accept": "application/json"}
        if self._api_key:
            headers["Authorization"] = f"Bearer {self._api_key}"
        request = urllib.request.Request(self.url, data=body, headers=headers, method="POST")
        try:
            with urllib.request.urlopen(request, timeout=self.timeout_s) as response:
                raw = response.read()
        except urllib.error.HTTPError as err:
            detail = _error_detail(err)
            if err.code == 429 or err.code >= 500:
                raise Unavailable(
                    f"{self.url} answered HTTP {err.code}{detail}; retry later", field="judge.endpoint"
                ) from None
            raise InvalidArgument(
                f"{self.url} rejected the request with HTTP {err.code}{detail} (check the URL, the "
                f"model name {self.model!r} and MONTESSORI_JUDGE_API_KEY)",
                field="judge.endpoint",
            ) from None
        except (urllib.error.URLError, TimeoutError, ConnectionError) as err:
            reason = getattr(err, "reason", err)
            raise Unavailable(f"cannot reach {self.url}: {reason}", field="judge.endpoint") from None
        try:
            content = json.loads(raw)["choices"][0]["message"]["content"]
        except (ValueError, KeyError, IndexError, TypeError):
            raise InvalidArgument(
                f"{self.url} did not answer like an OpenAI chat completion (expected "
                f"choices[0].message.content): {raw[:200]!r}",
                field="judge.endpoint",
            ) from None
        if not isinstance(content, str):
            raise InvalidArgument(f"{self.url}: choices[0].message.content is not a string", field="judge.endpoint")
        return content


def _error_detail(err: urllib.error.HTTPError) -> str:
    try:
        text = err.read(300).decode(errors="replace").strip()
    except OSError:
        return ""
    return f": {text}" if text else ""


def make_judge(settings: JudgeSettings, *, api_key: str | None = None) -> Judge:
    """The judge the settings name (a local folder is loaded now)."""
    if settings.model is not None:
        return LocalJudge(settings.model, batch_size=settings.batch_size)
    return EndpointJudge(settings.endpoint, settings.endpoint_model, api_key, timeout_s=settings.timeout_s)


def select_rows(rows: Sequence[dict], max_rows: int | None) -> list[int]:
    """Indices of the rows judged: all of them, or ``max_rows`` spread evenly over the file (a held-out file
    is grouped by category, so its first rows would be one or two categories only)."""
    total = len(rows)
    if max_rows is None or max_rows >= total:
        return list(range(total))
    return [i * total // max_rows for i in range(max_rows)]


def generate_answers(student: ModelRef, rows: Sequence[dict], settings: JudgeSettings, *, field: str) -> list[str]:
    """The student's greedy answer to each row, its prompt formatted as everywhere in the project
    (:func:`common.chat.chat_prompt` of :func:`common.chat.instruction_text`) with the student's chat template."""
    backend = TransformersBackend(student, field=field)
    if student.chat_template is not None:  # the backend loads the folder's own template; an explicit one wins
        backend.tokenizer = load_tokenizer(student, field=field, padding_side="left")
    params = SamplingParams(n=1, temperature=0.0, max_new_tokens=settings.max_new_tokens)
    prompts = [backend.chat_prompt(instruction_text(row["instruction"], row.get("input", ""))) for row in rows]
    answers: list[str] = []
    for start in range(0, len(prompts), settings.batch_size):
        answers.extend(
            samples[0].strip() for samples in backend.generate(prompts[start : start + settings.batch_size], params)
        )
    return answers


def judge_pair(
    rows: Sequence[dict],
    answers_a: Sequence[str],
    answers_b: Sequence[str],
    judge: Judge,
    settings: JudgeSettings,
    *,
    indices: Sequence[int] | None = None,
) -> dict:
    """The win rate of A against B on ``rows``, each judged with A first and with B first.

    ``indices`` are the rows' positions in their file (for the per-row records; default 0..n-1).
    Returns ``n``, ``win_rate``, ``wins``/``ties``/``losses`` (instructions whose score is above, at or
    below one half), ``agreement`` (share of instructions whose two orders give A the same score),
    ``unparseable`` (verdicts, of 2n), ``first_position_rate`` (share of decisive verdicts that chose the
    response shown first: the judge's position bias), ``interval`` (95% bootstrap of the win rate),
    ``categories`` (per-category figures, when rows have ``category``) and ``rows`` (per-row records).
    """
    if not len(rows) == len(answers_a) == len(answers_b):
        raise InvalidArgument(
            f"need one answer per row from each student: {len(rows)} rows, {len(answers_a)} answers "
            f"from A, {len(answers_b)} from B"
        )
    if not rows:
        raise InvalidArgument("no rows to judge", field="rows")
    indices = list(range(len(rows))) if indices is None else list(indices)
    if len(indices) != len(rows):
        raise InvalidArgument(f"{len(indices)} indices for {len(rows)} rows", field="indices")
    users = [instruction_text(row["instruction"], row.get("input", "")) for row in rows]
    # All A-first prompts, then all B-first prompts, batched alike: identical answers give identical prompts
    # in both orders, so a deterministic judge scores a student against itself at exactly one half.
    a_first = judge.complete(
        [judge_prompt(u, a, b) for u, a, b in zip(users, answers_a, answers_b)],
        max_new_tokens=settings.verdict_max_new_tokens,
    )
    b_first = judge.complete(
        [judge_prompt(u, b, a) for u, a, b in zip(users, answers_a, answers_b)],
        max_new_tokens=settings.verdict_max_new_tokens,
    )
    if len(a_first) != len(rows) or len(b_first) != len(rows):
        raise InvalidArgument(f"the judge returned {len(a_first)}/{len(b_first)} verdicts for {len(rows)} rows")
    records = []
    for index, row, answer_a, answer_b, out_a, out_b in zip(indices, rows, answers_a, answers_b, a_first, b_first):
        verdict_a_first, verdict_b_first = parse_verdict(out_a), parse_verdict(out_b)
        score_a_first = score_for_first(verdict_a_first)
        score_b_first = 1.0 - score_for_first(verdict_b_first)
        record = {
            "index": index,
            "instruction": row["instruction"],
            "answer_a": answer_a,
            "answer_b": answer_b,
            "judge_output_a_first": out_a,
            "judge_output_b_first": out_b,
            "verdict_a_first": verdict_a_first,
            "verdict_b_first": verdict_b_first,
            "agree": score_a_first == score_b_first,
            "score": (score_a_first + score_b_first) / 2,
        }
        if "category" in row:
            record["category"] = row["category"]
        records.append(record)
    verdicts = [r[key] for r in records for key in ("verdict_a_first", "verdict_b_first")]
    decisive = [v for v in verdicts if v in ("first", "second")]
    interval = bootstrap_mean(
        [r["score"] for r in records], resamples=RESAMPLES, confidence=CONFIDENCE, seed=BOOTSTRAP_SEED
    )
    result = {
        **_tally(records),
        "agreement": sum(r["agree"] for r in records) / len(records),
        "unparseable": sum(v == "unparseable" for v in verdicts),
        "first_position_rate": sum(v == "first" for v in decisive) / len(decisive) if decisive else None,
        "interval": {
            "ci_low": interval.ci_low,
            "ci_high": interval.ci_high,
            "confidence": CONFIDENCE,
            "resamples": RESAMPLES,
            "excludes_half": interval.ci_low > 0.5 or interval.ci_high < 0.5,
        },
        "rows": records,
    }
    by_category: dict[str, list[dict]] = defaultdict(list)
    for record in records:
        if "category" in record:
            by_category[str(record["category"])].append(record)
    if by_category:
        result["categories"] = {name: _tally(group) for name, group in sorted(by_category.items())}
    return result


def _tally(records: Sequence[dict]) -> dict:
    scores = [r["score"] for r in records]
    return {
        "n": len(scores),
        "win_rate": sum(scores) / len(scores),
        "wins": sum(s > 0.5 for s in scores),
        "ties": sum(s == 0.5 for s in scores),
        "losses": sum(s < 0.5 for s in scores),
    }
