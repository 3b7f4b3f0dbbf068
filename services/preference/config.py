"""Settings of preference-pair assembly."""

from __future__ import annotations

from dataclasses import dataclass

from montessori.v1.settings import PreferenceSettingsFields


@dataclass
class PreferenceConfig(PreferenceSettingsFields):
    """The method's rule plus optional extensions (all off by default).

    Fields, defaults and accepted values: ``montessori.v1.PreferenceSettings`` (generated into
    ``montessori/v1/settings.py``).
    """
