"""A sharded round's audit: the worst shard's agreement, the audited total, any fallback."""

from services.influence.tasks import merge_audits


def test_merged_audit_reports_the_worst_shard_and_any_fallback():
    shards = [
        {
            "candidates": 8,
            "audit_size": 2,
            "audit_spearman": 0.98,
            "audit_pair_agreement": 1.0,
            "fell_back_to_exact": 0,
            "scored_by_first_order": 1,
            "scored_by_exact": 0,
        },
        {
            "candidates": 8,
            "audit_size": 2,
            "audit_spearman": 0.41,
            "audit_pair_agreement": 0.5,
            "fell_back_to_exact": 1,
            "scored_by_first_order": 0,
            "scored_by_exact": 1,
        },
    ]
    assert merge_audits(shards) == {
        "audit_size": 4,
        "audit_spearman": 0.41,
        "audit_pair_agreement": 0.5,
        "fell_back_to_exact": 1,
        "scored_by_first_order": 1,
        "scored_by_exact": 1,
    }
    assert merge_audits([{"candidates": 3}]) == {}
