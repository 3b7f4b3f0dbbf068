"""What holds for every outcome of a loop's rounds, whatever its models happened to score (the loop-level tests
assert these under several draws; tests/constructed.py makes the branch with pairs certain)."""

from __future__ import annotations


def assert_rounds_consistent(store, summary, loop_id: str) -> None:
    """What holds for every outcome of every round: a round with pairs trained the teacher on exactly those pairs
    and the training set was written by that updated teacher; a round without says why and kept the teacher; the
    student always trains from the base student, and the next round probes the student this round trained."""
    adapters: list[dict] = []
    for row in summary["iterations"]:
        base = f"loops/{loop_id}/iter-{row['iteration']}"
        pairs = store.get_jsonl(f"{base}/pairs/pairs.jsonl")
        assert row["pairs"] == len(pairs)
        data = store.get_json(f"{base}/train-data/manifest.json")
        if row["pairs"]:
            dpo = store.get_json(f"{base}/dpo/manifest.json")
            assert (
                dpo["inputs"]["pairs"]["sha256"]
                == store.get_json(f"{base}/pairs/manifest.json")["outputs"]["pairs"]["sha256"]
            )
            adapters.append(dpo["outputs"]["adapter"])
            assert row["dpo_reward_margin"] is not None and not row["teacher_unchanged_reason"]
        else:
            assert not store.exists(f"{base}/dpo/manifest.json") and row["dpo_reward_margin"] is None
            assert row["teacher_unchanged_reason"].startswith("no preference pairs")
        assert data["inputs"]["teacher"]["model"]["adapters"] == adapters  # the current teacher wrote the data
        assert row["teacher_adapters"] == [a["uri"] for a in adapters]
        student = store.get_json(f"{base}/student/manifest.json")
        assert student["inputs"]["student"]["base"]["path"].endswith("tiny-student")
        following = f"loops/{loop_id}/iter-{row['iteration'] + 1}/warmup/manifest.json"
        if store.exists(following):
            assert store.get_json(following)["inputs"]["student"]["base"] == student["outputs"]["model"]


def assert_pairs_from_scored_groups(store, loop_id: str, iteration: int) -> list[dict]:
    """Every pair joins a helpful and a harmful candidate of one prompt group; returns the pairs."""
    base = f"loops/{loop_id}/iter-{iteration}"
    scores = {r["id"]: r["influence"] for r in store.get_jsonl(f"{base}/scores/scores.jsonl")}
    candidates = {r["id"]: r for r in store.get_jsonl(f"{base}/probe-data/candidates.jsonl")}
    pairs = store.get_jsonl(f"{base}/pairs/pairs.jsonl")
    for pair in pairs:
        chosen, rejected = candidates[pair["chosen_id"]], candidates[pair["rejected_id"]]
        assert scores[chosen["id"]] > 0 > scores[rejected["id"]]
        assert chosen["group_id"] == rejected["group_id"] and pair["prompt"] == chosen["prompt"]
    return pairs
