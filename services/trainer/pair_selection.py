"""Which preference pairs a DPO round trains on when ``dpo.max_pairs`` caps them: balanced across prompt groups."""

from __future__ import annotations

from collections import defaultdict

from common.errors import InvalidArgument


def pair_margin(pair: dict) -> float:
    """How much more the chosen sample helped the student than the rejected one."""
    return pair["chosen_influence"] - pair["rejected_influence"]


def select_pairs(pairs: list[dict], limit: int | None) -> list[dict]:
    """At most ``limit`` pairs, balanced across prompt groups (all of them when ``limit`` is None or not below ``len``).

    Round-robin over the groups: round r takes every group's r-th pair by descending influence
    margin (:func:`pair_margin`), so no group gets a second pair before every group with pairs
    has one. Within a round the larger margins come first; ties keep the input order. Returns
    the chosen pairs in that order; deterministic for the same input.
    """
    if limit is None or limit >= len(pairs):
        return list(pairs)
    groups: dict[str, list[tuple[int, dict]]] = defaultdict(list)
    for position, pair in enumerate(pairs):
        for key in ("group_id", "chosen_influence", "rejected_influence"):
            if key not in pair:
                raise InvalidArgument(
                    f"pair {position} has no {key!r}: balancing needs the preference stage's pairs", field="pairs"
                )
        groups[pair["group_id"]].append((position, pair))
    ranked = [sorted(members, key=lambda item: (-pair_margin(item[1]), item[0])) for members in groups.values()]
    selected: list[dict] = []
    for rank in range(max(len(members) for members in ranked)):
        round_ = sorted(
            (members[rank] for members in ranked if rank < len(members)),
            key=lambda item: (-pair_margin(item[1]), item[0]),
        )
        selected.extend(pair for _, pair in round_[: limit - len(selected)])
        if len(selected) == limit:
            break
    return selected
