"""How well an approximate influence scoring agrees with ``exact``: rank correlation and preference pairs."""

from __future__ import annotations

import torch


def spearman(a: list[float], b: list[float]) -> float:
    """Spearman rank correlation (average ranks for ties)."""

    def ranks(values):
        order = sorted(range(len(values)), key=values.__getitem__)
        result = [0.0] * len(values)
        i = 0
        while i < len(order):
            j = i
            while j + 1 < len(order) and values[order[j + 1]] == values[order[i]]:
                j += 1
            for k in range(i, j + 1):
                result[order[k]] = (i + j) / 2
            i = j + 1
        return result

    if len(a) < 2:
        return 1.0
    ra, rb = torch.tensor(ranks(a), dtype=torch.float64), torch.tensor(ranks(b), dtype=torch.float64)
    ra, rb = ra - ra.mean(), rb - rb.mean()
    denominator = float(ra.norm() * rb.norm())
    return float((ra * rb).sum()) / denominator if denominator else 1.0


def pair_agreement(groups: list[str], exact: list[float], estimate: list[float]) -> float:
    """Share of preference pairs (the method's rule) that both scorings produce: |E & F| / |E | F|."""

    def pairs(values):
        out = set()
        for i, gi in enumerate(groups):
            for j, gj in enumerate(groups):
                if gi == gj and values[i] > 0 > values[j]:
                    out.add((i, j))
        return out

    e, f = pairs(exact), pairs(estimate)
    return len(e & f) / len(e | f) if e | f else 1.0
