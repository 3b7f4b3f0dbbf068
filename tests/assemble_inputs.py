"""Inputs of a preference Assemble that surely forms one pair: one prompt group of a helpful and a harmful
candidate, published in a loop's stage folders."""

from __future__ import annotations

from common.protoconv import ref_to_proto
from montessori.v1 import common_pb2


def one_pair_inputs(store, base: str = "loops/L/iter-1") -> tuple[common_pb2.ArtifactRef, common_pb2.ArtifactRef]:
    """(candidates, scores) references for the Assemble request of ``<base>/pairs``."""
    rows = [{"id": f"c{i}", "group_id": "g", "prompt": "p", "raw_sample": f"s{i}"} for i in range(2)]
    candidates = store.put_jsonl(f"{base}/probe-data/candidates.jsonl", rows)
    scores = store.put_jsonl(
        f"{base}/scores/scores.jsonl", [{"id": "c0", "influence": 1.0}, {"id": "c1", "influence": -1.0}]
    )
    return ref_to_proto(candidates), ref_to_proto(scores)
