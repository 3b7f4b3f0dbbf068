"""Settings of instruction synthesis and response generation (METHOD.md stages 1-2)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from common.config import check, field
from common.device import DEVICE_SETTINGS, is_device_setting
from montessori.v1.settings import SynthesisSettingsFields


@dataclass
class SynthesisConfig(SynthesisSettingsFields):
    """How the teacher writes instructions and answers them.

    Fields, defaults and accepted values: ``montessori.v1.SynthesisSettings`` (generated into
    ``montessori/v1/settings.py``); here the rule that relates two fields.
    """

    def __post_init__(self) -> None:
        super().__post_init__()
        check(
            self.generated_examples_per_prompt < self.examples_per_prompt,
            "generated_examples_per_prompt",
            "must be smaller than examples_per_prompt",
        )


@dataclass
class VLLMSettings:
    """The vLLM engine of a teacher service started with ``--backend vllm``."""

    dtype: str = field(
        "auto",
        help="Engine weights dtype ('auto': vLLM's choice for the model; float32 on a CPU without native bf16).",
    )
    max_model_len: int = field(2048, help="Longest prompt + completion the engine accepts.")
    kv_cache_gib: int = field(1, help="CPU only: KV-cache size in GiB (VLLM_CPU_KVCACHE_SPACE).")
    gpu_memory_utilization: float = field(0.5, help="GPU only: share of GPU memory the engine may take.")
    max_lora_rank: int = field(
        16,
        help="Largest adapter rank served; a longer adapter chain (ranks add up) is truncated to it by SVD. "
        "The CPU build's LoRA cost grows with it (measured on SmolLM2, r=8 adapter: 133 tokens/s at 8, 106 at 16, "
        "45 at 32, 10 at 64); on a GPU, 64 costs little.",
    )
    serving: Literal["adapter", "merged"] = field(
        "adapter",
        help="How a teacher version is served. 'adapter': its adapter chain collapsed into one LoRA adapter, "
        "hot-swapped into the running engine (no restart; several versions resident). 'merged': the chain merged "
        "into a copy of the base weights (cache_dir/vllm-merged) and an engine started on it, LoRA off, one engine "
        "at a time: a version runs at the base model's speed, at the cost of an engine restart whenever another "
        "version (or the base) is asked for and a model copy on disk per version. Meant for a CPU, where the LoRA "
        "kernels are slow (SmolLM2 on an AVX2 CPU: 26 tokens/s with an r=8 adapter against 84 for the base, "
        "bench/results/teacher-smollm2-135m-instruct-avx2.json).",
    )
    max_loras_per_batch: int = field(1, help="Different teacher versions one engine batch may mix.")
    max_resident_versions: int = field(
        4,
        help="Teacher versions kept loaded (merged serving: kept ready to serve); the least recently used is "
        "unloaded first.",
    )
    canary_tokens: int = field(16, help="Greedy tokens the canary compares before a new version serves.")
    canary_tolerance: float | None = field(
        None,
        help="Largest per-token log-probability difference between engine and transformers+peft (fp32) the "
        "canary accepts; None: 0.05 for a float32 engine, 0.5 for a 16-bit one (its rounding alone moves "
        "log-probabilities by about 0.2).",
    )

    def __post_init__(self) -> None:
        check(
            self.dtype in ("auto", "float32", "bfloat16", "float16"),
            "dtype",
            "must be auto, float32, bfloat16 or float16",
        )
        check(64 <= self.max_model_len <= 1_048_576, "max_model_len", "must be in 64..1048576")
        check(1 <= self.kv_cache_gib <= 1024, "kv_cache_gib", "must be in 1..1024")
        check(0.05 <= self.gpu_memory_utilization <= 0.99, "gpu_memory_utilization", "must be in [0.05, 0.99]")
        check(
            self.max_lora_rank in (8, 16, 32, 64, 128, 256), "max_lora_rank", "must be one of 8, 16, 32, 64, 128, 256"
        )
        check(self.serving in ("adapter", "merged"), "serving", "must be adapter or merged")
        check(1 <= self.max_loras_per_batch <= 64, "max_loras_per_batch", "must be in 1..64")
        check(1 <= self.max_resident_versions <= 256, "max_resident_versions", "must be in 1..256")
        check(1 <= self.canary_tokens <= 256, "canary_tokens", "must be in 1..256")
        check(
            self.canary_tolerance is None or 0.0 < self.canary_tolerance <= 10.0,
            "canary_tolerance",
            "must be in (0, 10] or null",
        )


@dataclass
class TeacherServiceConfig:
    """How a teacher service generates (set at start-up, not per request)."""

    backend: Literal["transformers", "vllm"] = field(
        "transformers",
        help="'transformers': model.generate (runs anywhere). 'vllm': a vLLM engine with adapter "
        "hot-swap (needs the vLLM environment: .venv-vllm on CPU, the GPU image in a cluster).",
    )
    dtype: str = field(
        "float32", help="transformers backend: weights dtype (float32, bfloat16 or float16; 16-bit is for CUDA)."
    )
    device: str = field(
        "auto",
        help="transformers backend: where the model runs. 'auto' (the first CUDA device when there is one, else "
        "the CPU), 'cpu', 'cuda' or 'cuda:N'. (The vllm backend's canary reference runs on 'auto'.)",
    )
    vllm: VLLMSettings = field(default_factory=VLLMSettings, help="vllm backend settings.")

    def __post_init__(self) -> None:
        from common.models import DTYPES  # torch: only a teacher service builds this config

        check(self.dtype in DTYPES, "dtype", f"must be one of {', '.join(DTYPES)}")
        check(is_device_setting(self.device), "device", f"must be {DEVICE_SETTINGS}")
