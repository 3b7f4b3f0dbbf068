"""An influence estimate constructed to disagree with the exact scores, whatever the model.

Whether a real estimate (first-order at a huge step, a one-number projection) disagrees with the exact scores of a
tiny model is the draw's: its Spearman could be 1, and when no group holds both a helpful and a harmful candidate
(exact or estimated) no pair forms on either side and the pair agreement is 1. The tests of the fallback therefore
run the real estimate and then replace its values by :func:`reversed_within_groups` of the exact scores: in every
group of two or more the exactly less helpful half is scored positive and the more helpful half negative, so

* every pair the estimate forms is ordered against the exact scores, and the exact rule forms no such pair
  (it needs the chosen one strictly above 0 and strictly above the rejected one): pair agreement 0, with at least
  one estimated pair in a group of two;
* the estimate reverses the exact order within every group: Spearman below 1 as soon as one group's exact
  scores are not all equal.
"""

from __future__ import annotations

from collections import defaultdict

from services.influence.scoring import InfluenceScorer


def reversed_within_groups(rows: list[dict], groups: dict[str, str]) -> dict[str, float]:
    """``rank - (n - 1) / 2`` for the candidate of exact ``rank`` (0: the most helpful, ties by id) in a group of
    ``n``: the reverse of the centred ranks (a singleton gets 0)."""
    members: dict[str, list[dict]] = defaultdict(list)
    for row in rows:
        members[groups[row["id"]]].append(row)
    values = {}
    for group in members.values():
        ordered = sorted(group, key=lambda r: (-r["influence"], r["id"]))
        for rank, row in enumerate(ordered):
            values[row["id"]] = rank - (len(ordered) - 1) / 2
    return values


def reverse_estimates(monkeypatch, groups: dict[str, str]) -> None:
    """Every estimate (first_order, projected) is computed for real (progress, checkpoints and all), then its
    values are replaced by :func:`reversed_within_groups` of the candidates' exact scores (a deterministic function
    of them: a resumed job constructs the same values). Exact scoring, the audit and the fallback are untouched."""
    original = InfluenceScorer.score

    def score(self, examples, *, mode=None, **kwargs):
        rows = original(self, examples, mode=mode, **kwargs)
        if (mode or self.config.mode) == "exact":
            return rows
        values = reversed_within_groups(original(self, examples, mode="exact"), groups)
        keys = ("influence", "influence_raw", "influence_centred")
        return [{**row, **dict.fromkeys(keys, values[row["id"]])} for row in rows]

    monkeypatch.setattr(InfluenceScorer, "score", score)
