"""Settings of local-data-influence scoring."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, get_args

from common.config import check, documented_by, field
from common.device import DEVICE_SETTINGS, is_device_setting
from common.stage_results import INFLUENCE_MODES as STAGE_RESULT_MODES

InfluenceMode = Literal["exact", "first_order", "projected"]
#: Every scoring mode, in the order of ``InfluenceMode``.
INFLUENCE_MODES: tuple[str, ...] = get_args(InfluenceMode)
assert INFLUENCE_MODES == STAGE_RESULT_MODES, "common.stage_results flags each influence mode"
Centring = Literal["shared_step", "none"]
ComputeDtype = Literal["float32", "bfloat16"]
ReferenceAveraging = Literal["row_mean", "batch_mean"]


@documented_by("montessori.v1.InfluenceSettings")
@dataclass
class InfluenceConfig:
    """How one candidate's influence on the student is measured."""

    optimizer: Literal["faithful", "sgd"] = field("faithful")
    centring: Centring = field("shared_step")
    sgd_learning_rate: float = field(1e-4)
    mode: InfluenceMode = field("exact")
    projection_dim: int = field(16384)
    projection_seed: int = field(0)
    cache_projection: bool = field(True)
    candidate_batch_size: int = field(1)
    audit_size: int = field(0)
    min_agreement: float | None = field(None)
    min_pair_agreement: float | None = field(None)
    reference_size: int | None = field(None)
    reference_batch_size: int = field(16)
    reference_averaging: ReferenceAveraging = field("row_mean")
    max_length: int = field(512)
    device: str = field("auto")
    compute_dtype: ComputeDtype = field("float32")
    checkpoint_every: int = field(100)

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
        check(self.compute_dtype in get_args(ComputeDtype), "compute_dtype", "must be float32 or bfloat16")
        check(0 <= self.checkpoint_every <= 100_000_000, "checkpoint_every", "must be in 0..100000000")
