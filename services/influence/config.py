"""Settings of local-data-influence scoring."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from common.config import check, field


@dataclass
class InfluenceConfig:
    """How one candidate's influence on the student is measured."""

    optimizer: Literal["faithful", "sgd"] = field(
        "faithful",
        help="'faithful': AdamW whose whole state (moments, step, param-group lr) is restored from the warm-up "
        "before every candidate, as the official code does. 'sgd': one plain SGD step on the candidate's "
        "gradient with sgd_learning_rate (no optimizer state; measures the example alone, not warm-up momentum).",
    )
    sgd_learning_rate: float = field(1e-4, help="Step size of the 'sgd' mode.")
    mode: Literal["exact", "first_order"] = field(
        "exact",
        help="'exact': the definition (one step, then the reference loss), per candidate. 'first_order': its "
        "first-order Taylor estimate, lr * <grad of the reference loss, the candidate's update direction> (Adam's "
        "preconditioning in faithful mode); one backward per candidate and no reference pass.")
    audit_size: int = field(
        0, help="first_order: also score this many candidates exactly and report the agreement (Spearman, pair agreement).")
    min_agreement: float | None = field(
        None, help="first_order: when the audit's Spearman falls below this, warn and re-score the round exactly.")
    reference_size: int | None = field(
        None, help="Use only the first N rows of the reference set (None: all). The paper's official code uses 256.")
    reference_batch_size: int = field(16, help="Reference rows per forward pass (length-sorted, padded to the longest).")
    max_length: int = field(512, help="Token cap of one example (prompt + response); longer prompts are an error.")

    def __post_init__(self) -> None:
        check(0.0 < self.sgd_learning_rate <= 1.0, "sgd_learning_rate", "must be in (0, 1]")
        check(0 <= self.audit_size <= 1_000_000, "audit_size", "must be in 0..1000000")
        check(self.min_agreement is None or -1.0 <= self.min_agreement <= 1.0, "min_agreement", "must be in [-1, 1] or null")
        check(self.min_agreement is None or self.audit_size > 0, "min_agreement", "needs audit_size > 0")
        check(self.reference_size is None or self.reference_size >= 1, "reference_size", "must be >= 1 or null")
        check(1 <= self.reference_batch_size <= 1024, "reference_batch_size", "must be in 1..1024")
        check(8 <= self.max_length <= 131072, "max_length", "must be in 8..131072")
