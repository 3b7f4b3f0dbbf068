"""A teacher version's adapter chain as ONE LoRA adapter, the form an inference engine serves.

A teacher version is the base plus a chain of LoRA adapters, one per DPO round, each
trained on the previous version merged into the weights. A LoRA delta does not depend
on the weights it is added to (``dW = scale * B @ A``), so the chain's total delta on a
layer is the sum of its adapters' deltas, which is exactly one LoRA adapter whose rank is
the sum of the ranks: stack the (scaled) ``A`` matrices along the rank axis and the ``B``
matrices alongside. When that sum exceeds the engine's largest rank, the summed delta is
truncated by SVD to that rank (the best approximation of that rank; the canary judges it).

The other form is a merged model folder (:func:`merge_chain`): the chain merged into the base weights, as
``common.models.load_model`` merges it, saved as an ordinary model. An engine serves it with LoRA off, at the
base model's speed, but each version is a whole copy of the model and needs an engine of its own.
"""

from __future__ import annotations

import hashlib
import json
import math
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch

from common.errors import FailedPrecondition, NotFound
from common.models import DTYPES, ModelRef, load_model, model_dir

CONFIG = "adapter_config.json"
WEIGHTS = "adapter_model.safetensors"
COLLAPSE = "collapse.json"  # how the folder was made (rank, exact, truncation error), beside the adapter
MERGE = "merge.json"  # how a merged model folder was made (chain, dtype); written last, so the folder is complete
_A, _B = ".lora_A.weight", ".lora_B.weight"


@dataclass(frozen=True)
class CollapsedAdapter:
    """One adapter folder equivalent to a chain (``exact``) or its best rank-``rank`` approximation."""

    path: Path
    rank: int
    exact: bool
    #: Largest relative Frobenius error of a truncated layer delta (0 when exact).
    truncation_error: float


def chain_digest(adapters: tuple[str, ...]) -> str:
    """SHA-256 over the chain's adapter configs and weights, in order (names the collapsed folder)."""
    digest = hashlib.sha256()
    for folder in adapters:
        for name in (CONFIG, WEIGHTS):
            path = Path(folder) / name
            if not path.is_file():
                raise NotFound(f"no LoRA adapter ({name}) at {folder}", field="teacher.adapters")
            with path.open("rb") as handle:
                for block in iter(lambda: handle.read(1 << 20), b""):
                    digest.update(block)
    return digest.hexdigest()


def chain_rank(adapters: tuple[str, ...]) -> int:
    """The rank of the chain's summed delta on a layer all its adapters touch (at most; the ranks add up)."""
    return sum(int(json.loads((Path(folder) / CONFIG).read_text())["r"]) for folder in adapters)


def _read_adapter(folder: Path) -> tuple[dict, dict[str, torch.Tensor]]:
    from safetensors.torch import load_file

    config = json.loads((folder / CONFIG).read_text())
    if config.get("peft_type") != "LORA":
        raise FailedPrecondition(
            f"{folder} is not a LoRA adapter (peft_type {config.get('peft_type')})", field="teacher.adapters"
        )
    unsupported = [
        key for key in ("use_dora", "modules_to_save", "rank_pattern", "alpha_pattern", "lora_bias") if config.get(key)
    ]
    if unsupported:
        raise FailedPrecondition(
            f"{folder}: LoRA options {unsupported} cannot be served by the engine", field="teacher.adapters"
        )
    return config, load_file(str(folder / WEIGHTS))


def _scale(config: dict) -> float:
    rank = int(config["r"])
    return float(config["lora_alpha"]) / (math.sqrt(rank) if config.get("use_rslora") else rank)


def collapse_chain(adapters: tuple[str, ...], target: Path, *, max_rank: int) -> CollapsedAdapter:
    """Write the single adapter equivalent to ``adapters`` into ``target`` (atomically)."""
    if not adapters:
        raise FailedPrecondition("a base model has no adapter to collapse", field="teacher.adapters")
    factors: dict[str, list[tuple[torch.Tensor, torch.Tensor]]] = {}  # module -> [(scaled A, B)]
    base_config: dict = {}
    for folder in map(Path, adapters):
        config, weights = _read_adapter(folder)
        base_config = base_config or config
        scale = _scale(config)
        for key, a in weights.items():
            if key.endswith(_A):
                module = key[: -len(_A)]
                b = weights.get(module + _B)
                if b is None:
                    raise FailedPrecondition(f"{folder}: {module} has lora_A but no lora_B", field="teacher.adapters")
                factors.setdefault(module, []).append((a.float() * scale, b.float()))
    total_rank = max(sum(a.shape[0] for a, _ in pairs) for pairs in factors.values())
    exact = total_rank <= max_rank
    rank = total_rank if exact else max_rank
    tensors: dict[str, torch.Tensor] = {}
    worst = 0.0
    for module, pairs in factors.items():
        a = torch.cat([a for a, _ in pairs], dim=0)
        b = torch.cat([b for _, b in pairs], dim=1)
        if not exact:
            a, b, error = _truncate(a, b, rank)
            worst = max(worst, error)
        # Pad modules touched by fewer rounds with zero rank components (no effect on the delta).
        pad = rank - a.shape[0]
        a = torch.cat([a, a.new_zeros(pad, a.shape[1])]) if pad else a
        b = torch.cat([b, b.new_zeros(b.shape[0], pad)], dim=1) if pad else b
        tensors[module + _A] = a.contiguous()
        tensors[module + _B] = b.contiguous()
    config = {
        **base_config,
        "r": rank,
        "lora_alpha": rank,
        "use_rslora": False,
        "inference_mode": True,
        "target_modules": sorted({m.split("base_model.model.", 1)[-1] for m in factors}),
    }
    collapsed = CollapsedAdapter(path=target, rank=rank, exact=exact, truncation_error=worst)
    _write(target, config, tensors, {"rank": rank, "exact": exact, "truncation_error": worst, "chain": list(adapters)})
    return collapsed


def read_collapsed(target: Path) -> CollapsedAdapter | None:
    """A folder :func:`collapse_chain` finished earlier (None when there is none, or only part of one)."""
    try:
        meta = json.loads((target / COLLAPSE).read_text())
    except (OSError, ValueError):
        return None
    if not (target / CONFIG).is_file() or not (target / WEIGHTS).is_file():
        return None
    return CollapsedAdapter(
        path=target, rank=int(meta["rank"]), exact=bool(meta["exact"]), truncation_error=float(meta["truncation_error"])
    )


def merge_chain(ref: ModelRef, target: Path, *, dtype: str | None = None) -> Path:
    """``target``: a model folder holding ``ref``'s adapter chain merged into the base weights (in float32, each
    adapter in order) and the base's tokenizer, saved in ``dtype`` (None: the dtype the base's config declares).
    A complete folder already at ``target`` is reused; a new one is written into a staging folder and renamed,
    so that a crash never leaves a partial folder at ``target``."""
    from transformers import AutoTokenizer

    if (target / MERGE).is_file():
        return target
    if not ref.adapters:
        raise FailedPrecondition("a base model has no adapter to merge", field="teacher.adapters")
    base = model_dir(ref.path, field="teacher.path")
    dtype = dtype or declared_dtype(base)
    model = load_model(ref, field="teacher.adapters").to(DTYPES[dtype])
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
    try:
        model.save_pretrained(staging)
        AutoTokenizer.from_pretrained(base).save_pretrained(staging)
        (staging / MERGE).write_text(json.dumps({"base": ref.path, "chain": list(ref.adapters), "dtype": dtype}))
        if target.exists():  # a partial folder left by hand: a complete one returned above
            shutil.rmtree(target)
        staging.rename(target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return target


def declared_dtype(folder: Path) -> str:
    """The weights dtype a model folder's config declares (float32 when it declares none we load)."""
    config = json.loads((folder / "config.json").read_text())
    declared = config.get("dtype") or config.get("torch_dtype")
    return declared if declared in DTYPES else "float32"


def _truncate(a: torch.Tensor, b: torch.Tensor, rank: int) -> tuple[torch.Tensor, torch.Tensor, float]:
    """Best rank-``rank`` factors of ``b @ a`` (SVD), and the relative error of that approximation."""
    delta = b @ a
    u, s, vh = torch.linalg.svd(delta, full_matrices=False)
    root = s[:rank].sqrt()
    new_b, new_a = u[:, :rank] * root, root[:, None] * vh[:rank]
    norm = float(delta.norm())
    return new_a, new_b, float((delta - new_b @ new_a).norm()) / norm if norm else 0.0


def _write(target: Path, config: dict, tensors: dict[str, torch.Tensor], meta: dict) -> None:
    from safetensors.torch import save_file

    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
    try:
        (staging / CONFIG).write_text(json.dumps(config, indent=2))
        save_file(tensors, str(staging / WEIGHTS))
        (staging / COLLAPSE).write_text(json.dumps(meta, indent=2))
        if target.exists():
            shutil.rmtree(target)
        staging.rename(target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def random_adapter(
    base: str,
    target: Path,
    *,
    seed: int,
    rank: int = 8,
    alpha: int = 16,
    scale: float = 0.02,
    use_rslora: bool = False,
    target_modules: str | list[str] = "all-linear",
) -> str:
    """A LoRA adapter shaped like the DPO trainer's (by default r=8 on all linear layers) with seeded
    random weights (B non-zero, unlike a fresh adapter), so that the version visibly differs from the base: for
    serving benchmarks and tests, where no DPO run is needed to have an adapter."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    model = get_peft_model(
        AutoModelForCausalLM.from_pretrained(base),
        LoraConfig(
            r=rank, lora_alpha=alpha, use_rslora=use_rslora, target_modules=target_modules, task_type="CAUSAL_LM"
        ),
    )
    generator = torch.Generator().manual_seed(seed)  # A and B both from it: the same seed, the same adapter
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_A" in name:
                param.copy_(torch.randn(param.shape, generator=generator) / param.shape[1] ** 0.5)
            elif "lora_B" in name:
                param.copy_(torch.randn(param.shape, generator=generator) * scale)
    model.save_pretrained(target)
    return str(target)
