"""The canary that a new teacher version must pass before it serves.

Weight sync into an inference engine fails quietly: a stale adapter, a half-written file,
a cached copy of the wrong chain all still generate fluent text. So before a version
serves, the engine's greedy continuation of a fixed prompt is scored token by token by
the reference implementation, transformers + peft with the version's adapter chain
merged, and the version is refused when any token's log-probability differs by more
than the tolerance (bf16 engines need a looser one than fp32).

The reference model runs on the teacher's device, not as a second fp32 copy in host memory: on
a CUDA device in the engine's own dtype when that is 16-bit (an 8B teacher's reference then
takes 16 GB of GPU memory for the seconds the canary lasts, not 32 GB of host memory), in fp32
otherwise (a CPU reference stays exact), and it is freed before the version serves.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING

import torch

from common.device import resolve_device
from common.errors import FailedPrecondition
from common.models import DTYPES, load_model

if TYPE_CHECKING:
    from services.teacher.config import VLLMSettings
    from services.teacher.vllm_backend import ResidentVersion, VLLMEngine

CANARY_PROMPT = (
    "Below are instructions that a teacher wrote for a student.\n"
    "<instruction>Explain why the sky is blue in two sentences.</instruction>\n"
    "<instruction>Write a haiku about autumn leaves.</instruction>\n<instruction>"
)


@dataclass(frozen=True)
class CanaryReport:
    """How the engine's log-probabilities compare with the reference implementation's."""

    tokens: int
    max_abs_diff: float
    mean_abs_diff: float
    tolerance: float
    seconds: float

    @property
    def passed(self) -> bool:
        return self.max_abs_diff <= self.tolerance

    def to_dict(self) -> dict:
        return {**asdict(self), "passed": self.passed}


@torch.inference_mode()
def reference_logprobs(model, prompt_ids: list[int], continuation: list[int]) -> list[float]:
    """Log-probability of each continuation token under ``model`` (teacher forcing)."""
    ids = torch.tensor([prompt_ids + continuation], device=next(model.parameters()).device)
    logits = model(input_ids=ids).logits[0, len(prompt_ids) - 1 : -1].float()
    logprobs = torch.log_softmax(logits, dim=-1)
    return [float(logprobs[i, token]) for i, token in enumerate(continuation)]


def reference_dtype(device: torch.device, engine_dtype: torch.dtype) -> str:
    """The reference model's dtype: the engine's own 16-bit dtype on CUDA (half the memory of fp32, and the
    16-bit tolerance already allows for the rounding), float32 otherwise."""
    if device.type == "cuda":
        for name, dtype in DTYPES.items():
            if dtype == engine_dtype:
                return name
    return "float32"


def run_canary(
    engine: VLLMEngine, version: ResidentVersion, settings: VLLMSettings, *, device: str | torch.device = "auto"
) -> CanaryReport:
    """Compare the engine's ``version`` with transformers + peft on ``device`` (a torch device or a device
    setting); :class:`FailedPrecondition` on mismatch."""
    started = time.time()
    device = device if isinstance(device, torch.device) else resolve_device(device, field="device")
    prompt_ids = engine.tokenizer(CANARY_PROMPT, add_special_tokens=False)["input_ids"]
    continuation, served = engine.greedy_logprobs(prompt_ids, settings.canary_tokens, version=version.name)
    model = load_model(version.ref, field="teacher", dtype=reference_dtype(device, engine.dtype), device=device)
    expected = reference_logprobs(model, prompt_ids, continuation)
    del model  # the reference is needed for these few tokens only
    if device.type == "cuda":
        torch.cuda.empty_cache()  # give its memory back to the engine's process before the version serves
    diffs = [abs(a - b) for a, b in zip(served, expected)]
    tolerance = settings.canary_tolerance
    if tolerance is None:
        tolerance = 0.05 if engine.dtype == torch.float32 else 0.5
    report = CanaryReport(
        tokens=len(diffs),
        max_abs_diff=max(diffs, default=0.0),
        mean_abs_diff=sum(diffs) / max(len(diffs), 1),
        tolerance=tolerance,
        seconds=round(time.time() - started, 2),
    )
    if not report.passed:
        raise FailedPrecondition(
            f"canary refused teacher version {version.name!r}: the engine's log-probabilities differ from "
            f"transformers+peft by up to {report.max_abs_diff:.4f} (tolerance {report.tolerance}) over "
            f"{report.tokens} tokens; the loaded adapter is stale or corrupt",
            field="teacher_version",
        )
    return report
