"""The method's pairing rule (METHOD.md stage 5)."""

from __future__ import annotations

import json

import pytest

from common.artifacts import LocalArtifactStore
from common.errors import InvalidArgument
from services.preference.config import PreferenceConfig
from services.preference.pairs import ScoredCandidate, assemble_pairs
from services.preference.tasks import assemble
from services.trainer.pair_selection import pair_margin, select_pairs


def group(gid: str, influences: list[float]) -> list[ScoredCandidate]:
    return [
        ScoredCandidate(f"{gid}-s{i}", gid, f"prompt of {gid}", f"sample {gid}-{i}</instruction>", v)
        for i, v in enumerate(influences)
    ]


def test_every_positive_negative_combination_within_a_group():
    cands = group("g1", [0.3, -0.1, 0.2, -0.4]) + group("g2", [0.5, 0.1]) + group("g3", [-0.2, 0.0])
    pairs, stats = assemble_pairs(cands, PreferenceConfig())
    assert {(p["chosen_id"], p["rejected_id"]) for p in pairs} == {
        ("g1-s0", "g1-s1"),
        ("g1-s0", "g1-s3"),
        ("g1-s2", "g1-s1"),
        ("g1-s2", "g1-s3"),
    }
    assert all(p["prompt"] == "prompt of g1" for p in pairs)
    assert pairs[0]["chosen"] == "sample g1-0</instruction>" and pairs[0]["rejected"] == "sample g1-3</instruction>"
    # g2 has no negative, g3's zero is neither positive nor negative: no pairs there.
    assert stats == {**stats, "groups": 3, "groups_with_pairs": 1, "pairs": 4, "positive": 4, "negative": 3}


def test_capped_group_pairs_its_extremes_first():
    cands = group("g", [0.05, 0.9, -0.7, -0.01, 0.3])
    pairs, _ = assemble_pairs(cands, PreferenceConfig(max_pairs_per_group=1))
    assert [(p["chosen_id"], p["rejected_id"]) for p in pairs] == [("g-s1", "g-s2")]  # max vs min


def test_min_margin_drops_close_pairs():
    pairs, _ = assemble_pairs(group("g", [0.02, -0.01, -0.5]), PreferenceConfig(min_margin=0.1))
    assert [(p["chosen_id"], p["rejected_id"]) for p in pairs] == [("g-s0", "g-s2")]


def test_output_is_what_trl_dpo_reads(tmp_path):
    from datasets import load_dataset

    cands = group("g1", [0.3, -0.1])
    (tmp_path / "candidates.jsonl").write_text(
        "".join(
            json.dumps({"id": c.id, "group_id": c.group_id, "prompt": c.prompt, "raw_sample": c.raw_sample}) + "\n"
            for c in cands
        )
    )
    (tmp_path / "scores.jsonl").write_text(
        "".join(json.dumps({"id": c.id, "influence": c.influence}) + "\n" for c in cands)
    )
    result = assemble(
        LocalArtifactStore(tmp_path),
        "out",
        candidates_path=tmp_path / "candidates.jsonl",
        scores_path=tmp_path / "scores.jsonl",
        config=PreferenceConfig(),
    )
    dataset = load_dataset("json", data_files=str(tmp_path / "out" / "pairs.jsonl"), split="train")
    assert {"prompt", "chosen", "rejected"} <= set(dataset.column_names)
    assert dataset[0]["chosen"] == cands[0].raw_sample
    assert (
        json.loads((tmp_path / "out" / "manifest.json").read_text())["metrics"]["pairs"] == 1 == result.metrics["pairs"]
    )


def test_a_candidate_without_a_score_is_an_error_naming_the_file(tmp_path):
    (tmp_path / "candidates.jsonl").write_text(
        json.dumps({"id": "a", "group_id": "g", "prompt": "p", "raw_sample": "x"}) + "\n"
    )
    (tmp_path / "scores.jsonl").write_text(json.dumps({"id": "b", "influence": 0.1}) + "\n")
    with pytest.raises(InvalidArgument, match=r"candidates.jsonl:1: candidate a has no numeric influence"):
        assemble(
            LocalArtifactStore(tmp_path),
            "out",
            candidates_path=tmp_path / "candidates.jsonl",
            scores_path=tmp_path / "scores.jsonl",
            config=PreferenceConfig(),
        )
    assert not (tmp_path / "out").exists()


def test_an_empty_candidate_set_gives_no_pairs_not_an_error(tmp_path):
    (tmp_path / "candidates.jsonl").write_text("")
    (tmp_path / "scores.jsonl").write_text("")
    result = assemble(
        LocalArtifactStore(tmp_path),
        "out",
        candidates_path=tmp_path / "candidates.jsonl",
        scores_path=tmp_path / "scores.jsonl",
        config=PreferenceConfig(),
    )
    assert result.metrics["pairs"] == 0 and result.metrics["candidates"] == 0


def scored_pairs() -> list[dict]:
    """Pairs as assemble_pairs writes them: three groups of very different sizes, in group order."""
    cands = group("ga", [0.9, 0.5, 0.1, -0.2, -0.65]) + group("gb", [0.4, -0.3]) + group("gc", [0.2, 0.05, -0.7])
    pairs, _ = assemble_pairs(cands, PreferenceConfig())
    return pairs


def test_selection_is_balanced_across_groups_strongest_first():
    pairs = scored_pairs()
    assert [p["group_id"] for p in pairs[:6]] == ["ga"] * 6  # the old first-N cut took only group ga
    chosen = select_pairs(pairs, 5)
    assert sorted(p["group_id"] for p in chosen[:3]) == ["ga", "gb", "gc"]  # one per group before any second
    # Round 1: each group's largest margin (ga 1.55, gc 0.9, gb 0.7), largest first; round 2: ga 1.15, gc 0.75.
    assert [(p["chosen_id"], p["rejected_id"]) for p in chosen] == [
        ("ga-s0", "ga-s4"),
        ("gc-s0", "gc-s2"),
        ("gb-s0", "gb-s1"),
        ("ga-s1", "ga-s4"),
        ("gc-s1", "gc-s2"),
    ]
    # gb has one pair only; once it is used up the other groups go on alternating.
    assert [p["group_id"] for p in select_pairs(pairs, 7)] == ["ga", "gc", "gb", "ga", "gc", "ga", "ga"]


def test_selection_ranks_each_group_by_influence_margin():
    pairs = scored_pairs()
    chosen = [p for p in select_pairs(pairs, len(pairs) - 1) if p["group_id"] == "ga"]  # gb 1 + gc 2 + ga 5
    every = sorted((pair_margin(p) for p in pairs if p["group_id"] == "ga"), reverse=True)
    assert [pair_margin(p) for p in chosen] == every[:5]  # its five largest margins, largest first


def test_selection_is_deterministic_and_keeps_everything_when_the_limit_is_not_below_the_count():
    pairs = scored_pairs()
    assert select_pairs(pairs, 4) == select_pairs(list(pairs), 4) == select_pairs(scored_pairs(), 4)
    assert select_pairs(pairs, len(pairs)) == pairs and select_pairs(pairs, 100) == pairs
    assert select_pairs(pairs, None) == pairs
    # Equal margins keep the input order (no float ties decided by chance).
    tied = [{"group_id": g, "chosen_influence": 0.5, "rejected_influence": -0.5, "n": i} for i, g in enumerate("aabb")]
    assert [p["n"] for p in select_pairs(tied, 3)] == [0, 2, 1]


def test_selection_needs_the_pairs_provenance():
    with pytest.raises(InvalidArgument, match="chosen_influence"):
        select_pairs([{"prompt": "p", "chosen": "a", "rejected": "b", "group_id": "g"}] * 2, 1)
