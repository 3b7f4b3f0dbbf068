"""The loop's config: one typed, validated document (``montessori config`` prints it with help).

The embedded defaults are the CPU demo that ``make run`` runs: SmolLM2-135M-Instruct
as teacher, the pretrained (base) Gemma 3 270M as student (as the paper pairs an
instruct teacher with a base student), sizes chosen for 2 cores. Paper-scale
settings are in the README.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from common.chat import MAX_TEMPLATE_CHARS
from common.config import check, documented_by, field
from common.errors import NotFound
from montessori.v1.influence_pb2 import InfluenceSettings
from montessori.v1.preference_pb2 import PreferenceSettings
from montessori.v1.teacher_pb2 import SynthesisSettings
from montessori.v1.trainer_pb2 import DPOSettings, SFTSettings

# The stage sections are the stage requests' settings messages: they hold what the run sets, the worker that
# runs a stage resolves the rest from its own defaults and validates it (`montessori config` prints both).


_NAME = re.compile(r"[A-Za-z0-9._-]{1,100}")
#: Schemes of an artifact-store URI (``montessori models push`` and ``loop start`` print and send them).
STORE_SCHEMES = ("s3://", "file://")


def is_store_uri(value: str) -> bool:
    """Whether a model or data field names something in the artifact store (anything with a scheme does: a
    scheme other than :data:`STORE_SCHEMES` is refused by the config's validation)."""
    return "://" in value


def _check_location(value: str, name: str, what: str) -> None:
    check(bool(value.strip()), name, f"must name {what} or an artifact-store URI")
    check(
        not is_store_uri(value) or value.startswith(STORE_SCHEMES),
        name,
        f"must be {what} or an artifact-store URI (s3://<bucket>/<key> or file://<store>/<key>), got {value!r}",
    )


#: Largest loop seed: the stages' seeds (seed * 1000 + iteration * 10 + stage) stay below 2**32.
MAX_SEED = 1_000_000


def _sft_demo() -> SFTSettings:
    # 16 examples in 4 steps: no room for a warm-up and a decay, so a constant rate at the peak. A base student
    # learns the turn format and the answers from 4 steps only at a rate well above the paper's 5e-6 (for 8B).
    return SFTSettings(learning_rate=5e-5, batch_size=4, gradient_accumulation_steps=1, lr_scheduler="constant")


def _warmup_demo() -> SFTSettings:
    # 16 examples in 4 steps: a linear warm-up would spend the first one at lr 0; constant ends at the peak too.
    # 5e-5, ten times the paper's rate (for 8B): four steps at 5e-6 leave a base student where every candidate
    # helps it by teaching the response format (measured on Gemma 3 270M: all centred scores positive).
    return SFTSettings(learning_rate=5e-5, batch_size=4, gradient_accumulation_steps=1, lr_scheduler="constant")


def _dpo_demo() -> DPOSettings:
    return DPOSettings(max_pairs=12)


def _influence_demo() -> InfluenceSettings:
    return InfluenceSettings(reference_size=8)


@documented_by("montessori.v1.ModelsConfig")
@dataclass
class ModelsConfig:
    """Which models play teacher and student (any AutoModelForCausalLM folder): a folder on the workers' nodes
    (inside their models directory), or a model in the artifact store (``montessori models push`` prints its URI),
    which the loop pins by digest and every worker downloads once into its node-local cache."""

    teacher: str = field("models/smollm2-135m-instruct")
    student: str = field("models/gemma-3-270m")
    student_chat_template: str | None = field(None)
    dtype: str = field("float32")

    def __post_init__(self) -> None:
        _check_location(self.teacher, "teacher", "a model folder")
        _check_location(self.student, "student", "a model folder")
        # Whether it renders a prompt that the response extends needs the student's tokenizer: checked
        # (naming this field) by the loop's input validation before any work starts.
        check(
            self.student_chat_template is None or bool(self.student_chat_template.strip()),
            "student_chat_template",
            "must be a non-empty Jinja template, or null for the student folder's own (or the default)",
        )
        check(
            self.student_chat_template is None or len(self.student_chat_template) <= MAX_TEMPLATE_CHARS,
            "student_chat_template",
            f"must be at most {MAX_TEMPLATE_CHARS} characters",
        )
        check(self.dtype in ("float32", "bfloat16", "float16"), "dtype", "must be float32, bfloat16 or float16")


@documented_by("montessori.v1.DataConfig")
@dataclass
class DataConfig:
    """The three disjoint data sets: each a JSONL file the loop's process reads, or a file in the artifact store
    (``montessori loop start`` uploads local files there first and sends their URIs)."""

    seed_path: str = field("data/seed.jsonl")
    reference_path: str = field("data/reference.jsonl")
    eval_path: str = field("data/eval.jsonl")

    def __post_init__(self) -> None:
        for name in ("seed_path", "reference_path", "eval_path"):
            _check_location(getattr(self, name), name, "a JSONL file")

    def check_files(self) -> None:
        """Raise :class:`NotFound` naming the field of a missing local file (called before any work starts; a
        store URI is checked against the loop's store when the loop reads it)."""
        for name in ("seed_path", "reference_path", "eval_path"):
            if not is_store_uri(getattr(self, name)) and not Path(getattr(self, name)).is_file():
                raise NotFound(f"{getattr(self, name)} does not exist", field=f"data.{name}")


@documented_by("montessori.v1.SizesConfig")
@dataclass
class SizesConfig:
    """How much the teacher writes per iteration (paper: warm-up 100-200, 6K probing, 10K training)."""

    warmup_examples: int = field(16)
    probe_prompts: int = field(5)
    train_examples: int = field(16)

    def __post_init__(self) -> None:
        check(1 <= self.warmup_examples <= 1_000_000, "warmup_examples", "must be in 1..1000000")
        check(1 <= self.probe_prompts <= 1_000_000, "probe_prompts", "must be in 1..1000000")
        check(1 <= self.train_examples <= 10_000_000, "train_examples", "must be in 1..10000000")


@documented_by("montessori.v1.EvaluationConfig")
@dataclass
class EvaluationConfig:
    """The final comparison: Montessori students against Self-Instruct students and the base student, on held-out rows.

    Each arm gets ``draws`` independent training sets (sampling seeds of its own per arm and draw); draw d of both
    arms shares its SFT seed, so a paired difference compares data, not training noise. The spread that needs no
    method at all (another SFT seed, another data draw) is measured beside the effect.
    """

    baseline: bool = field(True)
    draws: int = field(1)
    null_sft_seed: bool = field(True)
    max_rows: int | None = field(40)
    shift_samples: int = field(0)
    bootstrap_resamples: int = field(2000)
    confidence: float = field(0.95)
    batch_size: int = field(16)

    def __post_init__(self) -> None:
        check(1 <= self.draws <= 1000, "draws", "must be in 1..1000")
        check(0 <= self.shift_samples <= 100_000, "shift_samples", "must be in 0..100000")
        check(self.max_rows is None or 1 <= self.max_rows <= 10_000_000, "max_rows", "must be in 1..10000000 or null")
        check(100 <= self.bootstrap_resamples <= 100_000, "bootstrap_resamples", "must be in 100..100000")
        check(0.5 <= self.confidence < 1.0, "confidence", "must be in [0.5, 1)")
        check(1 <= self.batch_size <= 1024, "batch_size", "must be in 1..1024")


@documented_by("montessori.v1.RunConfig")
@dataclass
class RunConfig:
    """A whole Montessori-Instruct run: K iterations, then evaluation against the baseline."""

    name: str = field("demo")
    loop_id: str | None = field(None)
    seed: int = field(0)
    iterations: int = field(1)
    continuous: bool = field(False)
    max_rounds: int | None = field(None)
    patience: int | None = field(None)
    artifacts: str = field("artifacts")
    models: ModelsConfig = field(default_factory=ModelsConfig)
    data: DataConfig = field(default_factory=DataConfig)
    sizes: SizesConfig = field(default_factory=SizesConfig)
    synthesis: SynthesisSettings = field(default_factory=SynthesisSettings)
    influence: InfluenceSettings = field(default_factory=_influence_demo)
    preference: PreferenceSettings = field(default_factory=PreferenceSettings)
    warmup: SFTSettings = field(default_factory=_warmup_demo)
    dpo: DPOSettings = field(default_factory=_dpo_demo)
    sft: SFTSettings = field(default_factory=_sft_demo)
    evaluation: EvaluationConfig = field(default_factory=EvaluationConfig)

    def __post_init__(self) -> None:
        # Names become store keys (the loop id is <name>-<timestamp>): a key segment is at most 255 characters.
        check(_NAME.fullmatch(self.name) is not None, "name", "must be 1-100 letters, digits, '-', '_' or '.'")
        check(
            self.loop_id is None or (_NAME.fullmatch(self.loop_id) is not None and self.loop_id not in (".", "..")),
            "loop_id",
            "must be 1-100 letters, digits, '-', '_' or '.', or null",
        )
        # Every stage derives its seed from this one (seed * 1000 + ...), and numpy seeds end at 2**32 - 1.
        check(0 <= self.seed <= MAX_SEED, "seed", f"must be in 0..{MAX_SEED}")
        check(1 <= self.iterations <= 1000, "iterations", "must be in 1..1000")
        check(self.max_rounds is None or 1 <= self.max_rounds <= 100_000, "max_rounds", "must be in 1..100000 or null")
        check(self.patience is None or 1 <= self.patience <= 100_000, "patience", "must be in 1..100000 or null")
        check(bool(self.artifacts.strip()), "artifacts", "must name a folder")
