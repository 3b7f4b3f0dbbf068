"""A copy of a model folder whose tokenizer has no chat template (as a base model's has none)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path


def templateless_copy(model: Path, target: Path) -> Path:
    """Copy ``model`` to ``target`` and remove its chat template (tokenizer_config.json and chat_template.jinja)."""
    shutil.copytree(model, target)
    config_path = target / "tokenizer_config.json"
    config = json.loads(config_path.read_text())
    config.pop("chat_template", None)
    config_path.write_text(json.dumps(config, indent=2, sort_keys=True))
    (target / "chat_template.jinja").unlink(missing_ok=True)
    return target
