"""Generation backends behind one interface: transformers here, vLLM in ``services.teacher.vllm_backend``."""

from __future__ import annotations

import threading
from abc import ABC, abstractmethod
from dataclasses import asdict, dataclass, field

import torch

from common.device import resolve_device
from common.errors import NotFound
from common.models import ModelRef, load_model, load_tokenizer


@dataclass(frozen=True)
class SamplingParams:
    """One generation request's sampling settings (recorded with every candidate)."""

    n: int = 1
    temperature: float = 1.0
    top_p: float = 1.0
    presence_penalty: float = 0.0
    max_new_tokens: int = 64
    stop: tuple[str, ...] = field(default=())
    seed: int = 0

    def to_dict(self) -> dict:
        return asdict(self)


class GenerationBackend(ABC):
    """Samples completions of raw prompt texts."""

    #: Tokens generated so far by this backend (for tokens/s).
    tokens_generated: int = 0

    @abstractmethod
    def generate(self, prompts: list[str], params: SamplingParams) -> list[list[str]]:
        """``params.n`` completions for each prompt (text after the prompt, cut before any stop string)."""

    @abstractmethod
    def chat_prompt(self, user_text: str) -> str:
        """``user_text`` as one user turn through the model's chat template, ready for the answer."""

    @property
    @abstractmethod
    def context_length(self) -> int:
        """Longest prompt + completion the model accepts."""


class PresencePenalty:
    """vLLM/OpenAI presence penalty for transformers: subtract ``penalty`` from the logit of
    every token that already occurs in the generated part (not the prompt)."""

    def __init__(self, penalty: float, prompt_length: int):
        self.penalty = penalty
        self.prompt_length = prompt_length

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        generated = input_ids[:, self.prompt_length :]
        if self.penalty == 0.0 or generated.shape[1] == 0:
            return scores
        seen = torch.zeros_like(scores, dtype=torch.bool).scatter_(1, generated, True)
        return scores - self.penalty * seen.to(scores.dtype)


class TransformersBackend(GenerationBackend):
    """``model.generate`` on ``device`` (a torch device or a device setting); the model is loaded once."""

    def __init__(
        self,
        ref: ModelRef,
        *,
        field: str = "teacher.path",
        dtype: str = "float32",
        device: str | torch.device = "cpu",
        share_prefill: bool = True,
    ):
        self.ref = ref
        self.share_prefill = share_prefill  # False: generate's own n-fold prefill (benchmarks compare the two)
        self.tokenizer = load_tokenizer(ref.path, field=field, padding_side="left")
        self.model = load_model(ref, field=field, dtype=dtype, device=device)
        self.tokens_generated = 0  # for tokens/s metrics

    @property
    def context_length(self) -> int:
        return int(getattr(self.model.config, "max_position_embeddings", 2048))

    def chat_prompt(self, user_text: str) -> str:
        from common.chat import chat_prompt

        return chat_prompt(self.tokenizer, user_text)

    def _shared_prefill(self, batch, n: int) -> tuple[dict, object]:
        """Each prompt's ``n`` samples as ``n`` rows, and a KV cache of all but the prompts' last token computed
        ONCE per prompt and copied to its rows: ``num_return_sequences`` would run the prompt's forward pass
        ``n`` times, and a synthesis prompt of 8 examples is far longer than its samples, so that pass dominates
        (positions as generate derives them from the left-padded mask)."""
        from transformers import DynamicCache

        ids, mask = batch["input_ids"], batch["attention_mask"]
        cache = None
        if ids.shape[1] > 1:
            cache = DynamicCache(config=self.model.config)
            positions = (mask.cumsum(-1) - 1).clamp(min=0)
            self.model(
                input_ids=ids[:, :-1],
                attention_mask=mask[:, :-1],
                position_ids=positions[:, :-1],
                past_key_values=cache,
                use_cache=True,
            )
            if n > 1:
                cache.batch_repeat_interleave(n)
        rows = {"input_ids": ids.repeat_interleave(n, 0), "attention_mask": mask.repeat_interleave(n, 0)}
        return rows, cache

    @torch.inference_mode()
    def generate(self, prompts: list[str], params: SamplingParams) -> list[list[str]]:
        from transformers import LogitsProcessorList

        batch = self.tokenizer(prompts, return_tensors="pt", padding=True, add_special_tokens=False).to(
            self.model.device
        )
        prompt_length = batch["input_ids"].shape[1]
        budget = min(params.max_new_tokens, self.context_length - prompt_length)
        if budget <= 0:
            return [[""] * params.n for _ in prompts]
        torch.manual_seed(params.seed)
        sampling = params.temperature > 0
        if self.share_prefill:
            inputs, cache = self._shared_prefill(batch, params.n)
            extra = {"past_key_values": cache}
        else:
            inputs, extra = dict(batch), {"num_return_sequences": params.n}
        output = self.model.generate(
            **inputs,
            **extra,
            do_sample=sampling,
            temperature=params.temperature if sampling else None,
            top_p=params.top_p if sampling else None,
            top_k=0 if sampling else None,
            max_new_tokens=budget,
            logits_processor=LogitsProcessorList([PresencePenalty(params.presence_penalty, prompt_length)]),
            stop_strings=list(params.stop) or None,
            tokenizer=self.tokenizer if params.stop else None,
            pad_token_id=self.tokenizer.pad_token_id,
            eos_token_id=self.tokenizer.eos_token_id,
        )
        generated = output[:, prompt_length:]
        self.tokens_generated += int((generated != self.tokenizer.pad_token_id).sum())
        texts = self.tokenizer.batch_decode(generated, skip_special_tokens=True)
        texts = [cut_at_stop(text, params.stop) for text in texts]
        return [texts[i * params.n : (i + 1) * params.n] for i in range(len(prompts))]


class TeacherBackends(ABC):
    """The teacher service's loaded model(s): a backend for a version, and the versions resident."""

    @abstractmethod
    def get(self, ref: ModelRef, *, version: str | None = None) -> GenerationBackend:
        """A backend generating with ``ref``; ``version`` names it where versions are served side by side."""

    @abstractmethod
    def load_version(self, name: str, ref: ModelRef) -> dict:
        """Make ``ref`` resident as ``name`` (idempotent); its description."""

    @abstractmethod
    def unload_version(self, name: str) -> None:
        """Drop a resident version (:class:`NotFound` when it is not resident)."""

    @abstractmethod
    def versions(self) -> list[dict]:
        """Descriptions of the resident versions."""

    def close(self) -> None:  # noqa: B027 - optional hook, deliberately not abstract
        """Release engines and worker processes (on shutdown)."""


class BackendCache(TeacherBackends):
    """transformers: one model version resident at a time (weights merged), swapped on demand."""

    def __init__(self, dtype: str = "float32", device: str | torch.device = "auto"):
        """``device``: a torch device, or a device setting resolved here (FAILED_PRECONDITION naming ``device`` when
        this machine lacks it, before any model loads)."""
        self.dtype = dtype
        self.device = device if isinstance(device, torch.device) else resolve_device(device, field="device")
        self._lock = threading.Lock()
        self._backend: TransformersBackend | None = None
        self._name: str | None = None

    def get(self, ref: ModelRef, *, version: str | None = None, field: str = "teacher") -> TransformersBackend:
        with self._lock:
            if self._backend is None or self._backend.ref != ref:
                self._backend = None  # free the old weights before loading the new ones
                self._backend = TransformersBackend(ref, field=field, dtype=self.dtype, device=self.device)
            self._name = version
            return self._backend

    def load_version(self, name: str, ref: ModelRef) -> dict:
        self.get(ref, version=name)
        return {"name": name, "model": ref.to_dict(), "backend": "transformers"}

    def unload_version(self, name: str) -> None:
        with self._lock:
            if self._backend is None or self._name != name:
                raise NotFound(f"teacher version {name!r} is not loaded", field="name")
            self._backend, self._name = None, None

    def versions(self) -> list[dict]:
        with self._lock:
            if self._backend is None:
                return []
            return [{"name": self._name or "", "model": self._backend.ref.to_dict(), "backend": "transformers"}]


def cut_at_stop(text: str, stop: tuple[str, ...]) -> str:
    """Text up to and including the first stop string (the tag closes the sample)."""
    cut = len(text)
    for marker in stop:
        index = text.find(marker)
        if index != -1:
            cut = min(cut, index + len(marker))
    return text[:cut]
