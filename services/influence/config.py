"""Settings of local-data-influence scoring."""

from __future__ import annotations

from dataclasses import dataclass

from common.config import check
from common.device import DEVICE_SETTINGS, is_device_setting
from common.settings_rules import choices
from common.stage_results import INFLUENCE_MODES as STAGE_RESULT_MODES
from montessori.v1.settings import InfluenceSettingsFields

#: Every scoring mode, in the order the proto lists them.
INFLUENCE_MODES: tuple[str, ...] = choices(InfluenceSettingsFields, "mode")
assert INFLUENCE_MODES == STAGE_RESULT_MODES, "common.stage_results flags each influence mode"


@dataclass
class InfluenceConfig(InfluenceSettingsFields):
    """How one candidate's influence on the student is measured.

    Fields, defaults and accepted values: ``montessori.v1.InfluenceSettings`` (generated into
    ``montessori/v1/settings.py``); here the rules that relate two fields.
    """

    def __post_init__(self) -> None:
        super().__post_init__()
        check(self.min_agreement is None or self.audit_size > 0, "min_agreement", "needs audit_size > 0")
        check(self.min_pair_agreement is None or self.audit_size > 0, "min_pair_agreement", "needs audit_size > 0")
        check(self.audit_size == 0 or self.mode != "exact", "audit_size", "needs mode first_order or projected")
        check(is_device_setting(self.device), "device", f"must be {DEVICE_SETTINGS}")
