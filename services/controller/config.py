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
from common.config import check, field
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


@dataclass
class ModelsConfig:
    """Which models play teacher and student (any AutoModelForCausalLM folder): a folder on the workers' nodes
    (inside their models directory), or a model in the artifact store (``montessori models push`` prints its URI),
    which the loop pins by digest and every worker downloads once into its node-local cache."""

    teacher: str = field(
        "models/smollm2-135m-instruct",
        help="Teacher: an instruction-tuned HF model folder, or its artifact-store URI (s3://bucket/models/...).",
    )
    student: str = field(
        "models/gemma-3-270m",
        help="Student: the HF model folder the data is for (a base model), or its artifact-store URI.",
    )
    student_chat_template: str | None = field(
        None,
        help="Jinja chat template the student's examples are formatted with, in warm-up and student SFT, influence "
        "scoring and evaluation alike (saved with every trained student). null: the student folder's own "
        "template, or, when its tokenizer has none, a plain '### Instruction:' / '### Response:' format whose "
        "response ends with the eos token. The teacher always uses its own template.",
    )
    dtype: str = field("float32", help="Weights dtype on load: float32 (CPU), bfloat16 or float16 (GPU).")

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


@dataclass
class DataConfig:
    """The three disjoint data sets: each a JSONL file the loop's process reads, or a file in the artifact store
    (``montessori loop start`` uploads local files there first and sends their URIs)."""

    seed_path: str = field(
        "data/seed.jsonl",
        help="Seed instructions (Alpaca JSONL) shown to the teacher in context (a path or an artifact-store URI).",
    )
    reference_path: str = field(
        "data/reference.jsonl", help="Reference (probe) set D_ref that defines influence (a path or a store URI)."
    )
    eval_path: str = field(
        "data/eval.jsonl", help="Held-out evaluation set, disjoint from the reference set (a path or a store URI)."
    )

    def __post_init__(self) -> None:
        for name in ("seed_path", "reference_path", "eval_path"):
            _check_location(getattr(self, name), name, "a JSONL file")

    def check_files(self) -> None:
        """Raise :class:`NotFound` naming the field of a missing local file (called before any work starts; a
        store URI is checked against the loop's store when the loop reads it)."""
        for name in ("seed_path", "reference_path", "eval_path"):
            if not is_store_uri(getattr(self, name)) and not Path(getattr(self, name)).is_file():
                raise NotFound(f"{getattr(self, name)} does not exist", field=f"data.{name}")


@dataclass
class SizesConfig:
    """How much the teacher writes per iteration (paper: warm-up 100-200, 6K probing, 10K training)."""

    warmup_examples: int = field(16, help="Warm-up set size (examples) for the student before probing.")
    probe_prompts: int = field(5, help="Synthesis prompts for the probing set (each gives one prompt group).")
    train_examples: int = field(
        16, help="Training-set size (examples) for the student's SFT; the baseline gets as many."
    )

    def __post_init__(self) -> None:
        check(1 <= self.warmup_examples <= 1_000_000, "warmup_examples", "must be in 1..1000000")
        check(1 <= self.probe_prompts <= 1_000_000, "probe_prompts", "must be in 1..1000000")
        check(1 <= self.train_examples <= 10_000_000, "train_examples", "must be in 1..10000000")


@dataclass
class EvaluationConfig:
    """The final comparison: Montessori students against Self-Instruct students and the base student, on held-out rows.

    Each arm gets ``draws`` independent training sets (sampling seeds of its own per arm and draw); draw d of both
    arms shares its SFT seed, so a paired difference compares data, not training noise. The spread that needs no
    method at all (another SFT seed, another data draw) is measured beside the effect.
    """

    baseline: bool = field(
        True, help="Train Self-Instruct students on the un-updated teacher's data (same size, same SFT)."
    )
    draws: int = field(
        1,
        help="Independent training sets per arm (each generated with its own sampling seed and trained into its own "
        "student). Draw 0 of the Montessori arm is the loop's own final student.",
    )
    null_sft_seed: bool = field(
        True,
        help="Also train Self-Instruct draw 0 again with another SFT seed: the difference that SFT noise alone "
        "makes, reported beside the effect.",
    )
    max_rows: int | None = field(
        40,
        help="Evaluate on the first N rows of the held-out set (None: all 80). Demo: 40 (each Gemma forward pass "
        "costs the output layer of a 262k vocabulary).",
    )
    shift_samples: int = field(
        0,
        help="Teacher shift (the paper's diagnostic): fresh examples written by each teacher version (0 = un-updated, "
        "1..K), scored exactly on the iteration-1 warmed-up student; mean influence and share of helpful examples per "
        "version. 0: skip. ~64 per version resolve differences near 1e-4 of reference loss.",
    )
    bootstrap_resamples: int = field(2000, help="Bootstrap resamples of every interval.")
    confidence: float = field(0.95, help="Confidence level of every interval.")
    batch_size: int = field(16, help="Rows per forward pass when computing held-out loss.")

    def __post_init__(self) -> None:
        check(1 <= self.draws <= 1000, "draws", "must be in 1..1000")
        check(0 <= self.shift_samples <= 100_000, "shift_samples", "must be in 0..100000")
        check(self.max_rows is None or 1 <= self.max_rows <= 10_000_000, "max_rows", "must be in 1..10000000 or null")
        check(100 <= self.bootstrap_resamples <= 100_000, "bootstrap_resamples", "must be in 100..100000")
        check(0.5 <= self.confidence < 1.0, "confidence", "must be in [0.5, 1)")
        check(1 <= self.batch_size <= 1024, "batch_size", "must be in 1..1024")


@dataclass
class RunConfig:
    """A whole Montessori-Instruct run: K iterations, then evaluation against the baseline."""

    name: str = field("demo", help="Run name; the loop id is <name>-<UTC timestamp> unless loop_id is set.")
    loop_id: str | None = field(None, help="Fixed loop id (artifacts go under loops/<loop_id>/).")
    seed: int = field(0, help="Seed of every sampling and training step; same seed, same artifacts.")
    iterations: int = field(
        1,
        help="Iterations K (the paper reports 2, its official code runs 1; the CPU demo runs 1 "
        "to stay within 15 minutes); ignored in continuous mode.",
    )
    continuous: bool = field(
        False, help="Keep iterating until stopped, max_rounds is reached, or the student stops improving (patience)."
    )
    max_rounds: int | None = field(None, help="Continuous mode: at most this many rounds (None: unbounded).")
    patience: int | None = field(
        None, help="Continuous mode: stop after this many rounds without a lower student reference loss (None: never)."
    )
    artifacts: str = field("artifacts", help="Artifact store: a local folder (or file:// URI).")
    models: ModelsConfig = field(default_factory=ModelsConfig, help="Teacher and student models.")
    data: DataConfig = field(default_factory=DataConfig, help="Seed, reference and evaluation sets.")
    sizes: SizesConfig = field(default_factory=SizesConfig, help="Set sizes per iteration.")
    synthesis: SynthesisSettings = field(default_factory=SynthesisSettings, help="Instruction synthesis and answering.")
    influence: InfluenceSettings = field(
        default_factory=_influence_demo,
        help="Influence scoring. Demo: faithful, centred, on 12 reference rows (see README).",
    )
    preference: PreferenceSettings = field(default_factory=PreferenceSettings, help="Preference-pair assembly.")
    warmup: SFTSettings = field(
        default_factory=_warmup_demo,
        help="Student warm-up SFT before probing (paper: lr 5e-6, "
        "effective batch 32, a linear warm-up over all steps that ends at the peak).",
    )
    dpo: DPOSettings = field(default_factory=_dpo_demo, help="Teacher DPO. Demo: at most 12 pairs per round.")
    sft: SFTSettings = field(
        default_factory=_sft_demo, help="Student SFT on the training set (paper: lr 5e-6, batch 32)."
    )
    evaluation: EvaluationConfig = field(default_factory=EvaluationConfig, help="Final evaluation.")

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
