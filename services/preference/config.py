"""Settings of preference-pair assembly."""

from __future__ import annotations

from dataclasses import dataclass

from common.config import check, documented_by, field


@documented_by("montessori.v1.PreferenceSettings")
@dataclass
class PreferenceConfig:
    """The method's rule plus optional extensions (all off by default)."""

    min_margin: float = field(0.0)
    max_pairs_per_group: int | None = field(None)

    def __post_init__(self) -> None:
        check(self.min_margin >= 0.0, "min_margin", "must be >= 0")
        check(
            self.max_pairs_per_group is None or self.max_pairs_per_group >= 1,
            "max_pairs_per_group",
            "must be >= 1 or null",
        )
