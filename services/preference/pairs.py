"""Preference pairs from influence scores (METHOD.md stage 5): the preference service's core."""

from __future__ import annotations

import statistics
from collections import defaultdict
from dataclasses import dataclass

from common.errors import InvalidArgument
from common.stage_results import AssembleMetrics
from services.preference.config import PreferenceConfig


@dataclass(frozen=True)
class ScoredCandidate:
    """What pairing needs of a candidate: its group, prompt, raw sample and influence."""

    id: str
    group_id: str
    prompt: str
    raw_sample: str
    influence: float


def assemble_pairs(candidates: list[ScoredCandidate], config: PreferenceConfig) -> tuple[list[dict], dict]:
    """Every (positive, negative) combination within a group becomes a pair.

    Returns TRL-ready rows ``{prompt, chosen, rejected}`` (plus provenance fields) and stats.
    Pairs are ordered by group, then most positive vs most negative first.
    """
    groups: dict[str, list[ScoredCandidate]] = defaultdict(list)
    for cand in candidates:
        if cand.influence != cand.influence:  # NaN cannot be ranked
            raise InvalidArgument(f"influence of candidate {cand.id} is NaN", field="scores")
        groups[cand.group_id].append(cand)
    pairs: list[dict] = []
    groups_with_pairs = 0
    for group_id in sorted(groups):
        members = groups[group_id]
        prompts = {m.prompt for m in members}
        if len(prompts) != 1:
            raise InvalidArgument(f"prompt group {group_id} has {len(prompts)} different prompts", field="candidates")
        positive = sorted((m for m in members if m.influence > 0), key=lambda m: (-m.influence, m.id))
        negative = sorted((m for m in members if m.influence < 0), key=lambda m: (m.influence, m.id))
        combos = [(p, n) for p in positive for n in negative if p.influence - n.influence > config.min_margin]
        combos.sort(key=lambda pn: (-(pn[0].influence - pn[1].influence), pn[0].id, pn[1].id))
        if config.max_pairs_per_group is not None:
            combos = combos[: config.max_pairs_per_group]
        if combos:
            groups_with_pairs += 1
        for chosen, rejected in combos:
            pairs.append(
                {
                    "prompt": chosen.prompt,
                    "chosen": chosen.raw_sample,
                    "rejected": rejected.raw_sample,
                    "group_id": group_id,
                    "chosen_id": chosen.id,
                    "rejected_id": rejected.id,
                    "chosen_influence": chosen.influence,
                    "rejected_influence": rejected.influence,
                }
            )
    influences = [c.influence for c in candidates]
    stats = AssembleMetrics(
        candidates=len(candidates),
        groups=len(groups),
        groups_with_pairs=groups_with_pairs,
        pairs=len(pairs),
        positive=sum(i > 0 for i in influences),
        negative=sum(i < 0 for i in influences),
        influence_mean=statistics.fmean(influences) if influences else 0.0,
        influence_min=min(influences, default=0.0),
        influence_max=max(influences, default=0.0),
        influence_stdev=statistics.pstdev(influences) if len(influences) > 1 else 0.0,
    ).to_metrics()
    return pairs, stats
