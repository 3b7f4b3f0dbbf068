"""Render a config dataclass as commented YAML (the config reference users copy from)."""

from __future__ import annotations

import dataclasses

import yaml

from common.settings_rules import accepted


def render_yaml(config, indent: int = 0) -> str:
    lines = []
    pad = "  " * indent
    for f in dataclasses.fields(config):
        value = getattr(config, f.name)
        help_text = f.metadata.get("help", "")
        if accepted(f):  # a stage setting's rule, from the proto
            help_text = f"{help_text} [accepted: {accepted(f)}]"
        if help_text:
            lines.append(f"{pad}# {help_text}")
        if dataclasses.is_dataclass(value):
            lines.append(f"{pad}{f.name}:")
            lines.append(render_yaml(value, indent + 1))
        else:
            rendered = yaml.safe_dump({f.name: value}, default_flow_style=True, width=1000).strip()
            lines.append(f"{pad}{rendered[1:-1] if rendered.startswith('{') else rendered}")
    return "\n".join(lines)
