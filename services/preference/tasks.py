"""The preference service's unit of work on artifacts: assemble DPO pairs."""

from __future__ import annotations

import time
from pathlib import Path

from common.artifacts import ArtifactStore
from common.errors import InvalidArgument
from common.jsonl import read_jsonl
from common.manifests import StageResult, input_ref, publish_manifest
from services.preference.config import PreferenceConfig
from services.preference.pairs import ScoredCandidate, assemble_pairs

PAIRS = "pairs.jsonl"


def assemble(
    store: ArtifactStore, prefix: str, *, candidates_path: Path, scores_path: Path, config: PreferenceConfig
) -> StageResult:
    """Join candidates with their scores, pair within groups; publish ``<prefix>/pairs.jsonl``."""
    started = time.time()
    candidates = read_jsonl(candidates_path, required=("id", "group_id", "prompt", "raw_sample"), allow_empty=True)
    scores = {r["id"]: r for r in read_jsonl(scores_path, required=("id",), allow_empty=True)}
    scored = []
    for number, cand in enumerate(candidates, start=1):
        score = scores.get(cand["id"])
        if score is None or not isinstance(score.get("influence"), (int, float)):
            raise InvalidArgument(
                f"{candidates_path}:{number}: candidate {cand['id']} has no numeric influence in {scores_path}"
            )
        scored.append(
            ScoredCandidate(cand["id"], cand["group_id"], cand["prompt"], cand["raw_sample"], float(score["influence"]))
        )
    pairs, stats = assemble_pairs(scored, config)
    ref = store.put_jsonl(f"{prefix}/{PAIRS}", pairs)
    inputs = {"candidates": input_ref(store, candidates_path), "scores": input_ref(store, scores_path)}
    return publish_manifest(
        store,
        prefix,
        stage="pairs",
        inputs=inputs,
        config=config,
        outputs={"pairs": ref},
        metrics=stats,
        started=started,
    )
