"""Settings of local-data-influence scoring."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, get_args

from common.config import check, field
from common.device import DEVICE_SETTINGS, is_device_setting
from common.stage_results import INFLUENCE_MODES as STAGE_RESULT_MODES

InfluenceMode = Literal["exact", "first_order", "projected"]
#: Every scoring mode, in the order of ``InfluenceMode``.
INFLUENCE_MODES: tuple[str, ...] = get_args(InfluenceMode)
assert INFLUENCE_MODES == STAGE_RESULT_MODES, "common.stage_results flags each influence mode"
Centring = Literal["shared_step", "none"]
ReferenceAveraging = Literal["row_mean", "batch_mean"]


@dataclass
class InfluenceConfig:
    """How one candidate's influence on the student is measured."""

    optimizer: Literal["faithful", "sgd"] = field(
        "faithful",
        help="'faithful': AdamW whose whole state (moments, step, param-group lr) is restored from the warm-up "
        "before every candidate, as the official code does. 'sgd': one plain SGD step on the candidate's "
        "gradient with sgd_learning_rate (no optimizer state; measures the example alone, not warm-up momentum).",
    )
    centring: Centring = field(
        "shared_step",
        help="'shared_step': influence(z) = L_ref(theta + step(0)) - L_ref(theta + step(g_z)), where step(0) is the "
        "restored optimizer's step with a zero gradient (the warm-up momentum and weight decay every candidate "
        "shares), so the sign says whether this candidate helps. 'none': the official L0 - L_ref(theta + step(g_z)), "
        "whose sign mostly reports the shared momentum step in faithful mode. Both are written to scores.jsonl; "
        "with 'sgd' (no state) the two are equal.",
    )
    sgd_learning_rate: float = field(1e-4, help="Step size of the 'sgd' mode.")
    mode: InfluenceMode = field(
        "exact",
        help="'exact': the definition (one step, then the reference loss), per candidate. 'first_order': its "
        "first-order Taylor estimate, lr * <grad of the reference loss, the candidate's update direction> (Adam's "
        "preconditioning in faithful mode); no reference pass per candidate. 'projected': the same inner product "
        "after a fixed random projection (count sketch) of both vectors to projection_dim numbers, for students "
        "too large to hold full gradients: the candidate's update is projected tensor by tensor during the backward "
        "pass and the reference gradient is kept only in projected form (unbiased, noisier than first_order).",
    )
    projection_dim: int = field(
        16384,
        help="projected: dimension of the random projection. Its noise falls as 1/sqrt(projection_dim) while "
        "its cost does not grow (a count sketch costs O(parameters + projection_dim)); 16384 is the largest whose "
        "cached codes take 2 bytes per parameter.",
    )
    projection_seed: int = field(0, help="projected: seed of the random projection (fixed for a whole round).")
    cache_projection: bool = field(
        True,
        help="projected: keep the projection's codes in memory (2 bytes per parameter while projection_dim "
        "<= 16384, else 4) instead of regenerating them from the seed for every candidate (no per-parameter state, "
        "about one random draw per parameter per candidate more).",
    )
    candidate_batch_size: int = field(
        1,
        help="Candidates scored together. exact: each takes its own optimizer step, then ONE vmapped reference "
        "pass evaluates all their stepped weights (one extra weight copy per candidate in memory). first_order/"
        "projected with optimizer 'sgd': one forward-mode pass gives every candidate's directional derivative "
        "(faithful mode always takes one backward per candidate). Same scores to ~1e-5 relative; it pays only "
        "where larger kernels do (not on the CPUs measured in docs/benchmarks.md, hence 1).",
    )
    audit_size: int = field(
        0,
        help="first_order/projected: also score this many candidates exactly and report the agreement "
        "(Spearman, pair agreement).",
    )
    min_agreement: float | None = field(
        None,
        help="first_order/projected: when the audit's Spearman falls below this, warn and re-score the round exactly.",
    )
    min_pair_agreement: float | None = field(
        None,
        help="first_order/projected: when the audit's pair agreement falls below this, warn and re-score the "
        "round exactly.",
    )
    reference_size: int | None = field(
        None, help="Use only the first N rows of the reference set (None: all). The paper's official code uses 256."
    )
    reference_batch_size: int = field(
        16, help="Reference rows per forward pass (length-sorted, padded to the longest)."
    )
    reference_averaging: ReferenceAveraging = field(
        "row_mean",
        help="How the reference loss averages: 'row_mean', the mean of each row's own mean response-token loss "
        "(every reference row weighs the same; reference_batch_size changes nothing); 'batch_mean', the official "
        "code's mean of per-batch token-pooled means (a row's weight depends on which rows share its batch).",
    )
    max_length: int = field(512, help="Token cap of one example (prompt + response); longer prompts are an error.")
    device: str = field(
        "auto",
        help="Where the student, its optimizer state and the reference set live while scoring: 'auto' (the "
        "first CUDA device when there is one, else the CPU), 'cpu', 'cuda' or 'cuda:N'. Weights stay fp32 (master "
        "weights) on every device: a step of lr 5e-6 vanishes in bf16 weights.",
    )
    checkpoint_every: int = field(
        100,
        help="Save the scores so far to the store (<output_prefix>-checkpoint, keyed by candidate id) every this "
        "many scored candidates, so that a job restarted with the same request continues from there and ends with "
        "the same scores file; deleted once the scores are published (0: no checkpoints).",
    )

    def __post_init__(self) -> None:
        check(0.0 < self.sgd_learning_rate <= 1.0, "sgd_learning_rate", "must be in (0, 1]")
        check(1 <= self.projection_dim <= 16_777_216, "projection_dim", "must be in 1..16777216")
        check(0 <= self.projection_seed < 2**63, "projection_seed", "must be in 0..2**63-1")
        check(1 <= self.candidate_batch_size <= 1024, "candidate_batch_size", "must be in 1..1024")
        check(0 <= self.audit_size <= 1_000_000, "audit_size", "must be in 0..1000000")
        check(
            self.min_agreement is None or -1.0 <= self.min_agreement <= 1.0,
            "min_agreement",
            "must be in [-1, 1] or null",
        )
        check(self.min_agreement is None or self.audit_size > 0, "min_agreement", "needs audit_size > 0")
        check(
            self.min_pair_agreement is None or 0.0 <= self.min_pair_agreement <= 1.0,
            "min_pair_agreement",
            "must be in [0, 1] or null",
        )
        check(self.min_pair_agreement is None or self.audit_size > 0, "min_pair_agreement", "needs audit_size > 0")
        check(self.audit_size == 0 or self.mode != "exact", "audit_size", "needs mode first_order or projected")
        check(self.reference_size is None or self.reference_size >= 1, "reference_size", "must be >= 1 or null")
        check(1 <= self.reference_batch_size <= 1024, "reference_batch_size", "must be in 1..1024")
        check(8 <= self.max_length <= 131072, "max_length", "must be in 8..131072")
        check(is_device_setting(self.device), "device", f"must be {DEVICE_SETTINGS}")
        check(0 <= self.checkpoint_every <= 100_000_000, "checkpoint_every", "must be in 0..100000000")
