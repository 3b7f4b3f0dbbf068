"""Stage manifests: what a stage read, how it was configured, what it wrote and measured.

A manifest is written after every output is published, so its presence means the
stage completed; it pins each input and output by SHA-256.
"""

from __future__ import annotations

import subprocess
import time
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

from common.artifacts import ArtifactRef, ArtifactStore
from common.config import config_digest, to_dict

MANIFEST = "manifest.json"


@lru_cache(maxsize=1)
def code_version() -> str:
    """``git describe`` of the checkout, or the package version outside one."""
    try:
        out = subprocess.run(
            ["git", "describe", "--always", "--dirty"],
            capture_output=True,
            text=True,
            timeout=5,
            cwd=Path(__file__).resolve().parent,
        )
        if out.returncode == 0 and out.stdout.strip():
            return out.stdout.strip()
    except (OSError, subprocess.SubprocessError):
        pass
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("montessori")
    except PackageNotFoundError:
        return "unknown"


def input_ref(store: ArtifactStore, path: Path) -> dict[str, str]:
    """An input given as a local file or folder, pinned by digest (by its store URI when it is an artifact)."""
    return store.describe(Path(path))


def model_input(store: ArtifactStore, model) -> dict[str, Any]:
    """A model version as a manifest input: its base (a node-local path, or an artifact) and its adapters
    (artifacts)."""
    base = store.artifact_of(Path(model.path))
    adapters = [store.artifact_of(Path(a)) for a in model.adapters]
    return {
        "base": base.to_dict() if base else {"path": model.path},
        "adapters": [a.to_dict() if a else {"path": str(p)} for a, p in zip(adapters, model.adapters)],
    }


@dataclass
class StageResult:
    """Outputs (by role) and metrics of one completed stage."""

    stage: str
    outputs: dict[str, ArtifactRef]
    metrics: dict[str, Any] = field(default_factory=dict)
    manifest: ArtifactRef | None = None


def publish_manifest(
    store: ArtifactStore,
    prefix: str,
    *,
    stage: str,
    inputs: dict[str, Any],
    config: Any,
    outputs: dict[str, ArtifactRef],
    metrics: dict[str, Any],
    started: float,
) -> StageResult:
    """Write ``<prefix>/manifest.json`` (last, so it marks completion) and return the stage result."""
    document = {
        "stage": stage,
        "inputs": inputs,
        "config": to_dict(config),
        "config_sha256": config_digest(config),
        "outputs": {role: ref.to_dict() for role, ref in outputs.items()},
        "metrics": metrics,
        "code_version": code_version(),
        "started_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(started)),
        "seconds": round(time.time() - started, 3),
    }
    ref = store.put_json(f"{prefix}/{MANIFEST}", document)
    return StageResult(stage, outputs, metrics, ref)
