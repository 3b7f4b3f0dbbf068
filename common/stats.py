"""The statistics an experiment reports: bootstrap intervals of means and of paired differences.

Held-out comparisons are *paired*: every student is evaluated on the same rows, so a row's
difference between two students removes the row's own difficulty. Their noise has two sources,
the held-out rows and the training run (which data draw, which SFT seed); :func:`paired_difference`
resamples both (rows and training units independently), so an interval is not made narrow by
many rows while it rests on one training run. Percentile intervals, a fixed generator seed: the
same inputs give the same interval on every machine (numpy's PCG64 and integer indexing only).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np

#: Resamples of every bootstrap unless a caller asks otherwise (interval ends move by ~1% of its width).
RESAMPLES = 2000


@dataclass(frozen=True)
class Interval:
    """A point estimate with a percentile bootstrap interval; ``n`` counts what was resampled (rows)."""

    mean: float
    ci_low: float
    ci_high: float
    n: int
    units: int = 1

    @property
    def excludes_zero(self) -> bool:
        return self.ci_low > 0 or self.ci_high < 0

    def to_dict(self) -> dict:
        return {**asdict(self), "excludes_zero": self.excludes_zero}


def _interval(point: float, draws: np.ndarray, confidence: float, n: int, units: int = 1) -> Interval:
    tail = (1.0 - confidence) / 2 * 100
    low, high = np.percentile(draws, [tail, 100 - tail]) if len(draws) else (point, point)
    return Interval(float(point), float(low), float(high), n, units)


def _check(confidence: float, resamples: int) -> None:
    if not 0 < confidence < 1:
        raise ValueError("confidence must be in (0, 1)")
    if resamples < 1:
        raise ValueError("resamples must be >= 1")


def bootstrap_mean(
    values: Sequence[float], *, resamples: int = RESAMPLES, confidence: float = 0.95, seed: int = 0
) -> Interval:
    """Mean of independent values with a percentile interval (resampling the values)."""
    _check(confidence, resamples)
    x = np.asarray(values, dtype=np.float64)
    if x.size == 0:
        return Interval(math.nan, math.nan, math.nan, 0)
    index = np.random.default_rng(seed).integers(0, x.size, size=(resamples, x.size))
    return _interval(x.mean(), x[index].mean(axis=1), confidence, x.size)


def paired_difference(
    a: Sequence[Sequence[float]],
    b: Sequence[Sequence[float]],
    *,
    resamples: int = RESAMPLES,
    confidence: float = 0.95,
    seed: int = 0,
) -> Interval:
    """Mean of ``a − b`` over training units (rows of the matrices) and held-out rows (columns).

    ``a[u][r]`` and ``b[u][r]`` are two students' losses on held-out row ``r`` in unit ``u``
    (a unit pairs students that share what should not differ, e.g. the SFT seed). Each resample
    draws units and rows with replacement, independently; with one unit only rows vary.
    """
    _check(confidence, resamples)
    x, y = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if x.shape != y.shape or x.ndim != 2 or x.size == 0:
        raise ValueError("paired_difference needs two equal non-empty units x rows matrices")
    d = x - y
    units, rows = d.shape
    rng = np.random.default_rng(seed)
    u = rng.integers(0, units, size=(resamples, units))
    r = rng.integers(0, rows, size=(resamples, rows))
    # Mean over the resampled units of each unit's mean over the resampled rows.
    draws = np.array([d[np.ix_(u[i], r[i])].mean() for i in range(resamples)])
    return _interval(d.mean(), draws, confidence, rows, units)


def difference_of_means(
    a: Sequence[float], b: Sequence[float], *, resamples: int = RESAMPLES, confidence: float = 0.95, seed: int = 0
) -> Interval:
    """``mean(a) − mean(b)`` for independent samples, each resampled on its own."""
    _check(confidence, resamples)
    x, y = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if x.size == 0 or y.size == 0:
        return Interval(math.nan, math.nan, math.nan, 0)
    rng = np.random.default_rng(seed)
    draws = x[rng.integers(0, x.size, size=(resamples, x.size))].mean(axis=1) - y[
        rng.integers(0, y.size, size=(resamples, y.size))
    ].mean(axis=1)
    return _interval(x.mean() - y.mean(), draws, confidence, x.size + y.size)


def stratified_difference(
    strata: Sequence[tuple[Sequence[float], Sequence[float]]],
    *,
    resamples: int = RESAMPLES,
    confidence: float = 0.95,
    seed: int = 0,
) -> Interval:
    """The mean over strata (e.g. seeds) of ``mean(a) − mean(b)``, each sample resampled within its stratum."""
    _check(confidence, resamples)
    strata = [
        (np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)) for a, b in strata if len(a) and len(b)
    ]
    if not strata:
        return Interval(math.nan, math.nan, math.nan, 0)
    rng = np.random.default_rng(seed)
    draws = np.zeros(resamples)
    for x, y in strata:
        draws += x[rng.integers(0, x.size, size=(resamples, x.size))].mean(axis=1) - y[
            rng.integers(0, y.size, size=(resamples, y.size))
        ].mean(axis=1)
    point = float(np.mean([x.mean() - y.mean() for x, y in strata]))
    return _interval(point, draws / len(strata), confidence, sum(x.size + y.size for x, y in strata), len(strata))


def positive_share(values: Sequence[float]) -> list[float]:
    """1.0 for each positive value, else 0.0 (so a share's interval is a mean's)."""
    return [1.0 if v > 0 else 0.0 for v in values]


def spearman(a: Sequence[float], b: Sequence[float]) -> float:
    """Spearman rank correlation (average ranks for ties); nan when either side is constant or too short."""
    x, y = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if x.size < 3:
        return math.nan

    def ranks(v: np.ndarray) -> np.ndarray:
        order = np.argsort(v, kind="stable")
        r = np.empty(v.size)
        r[order] = np.arange(v.size, dtype=np.float64)
        for value in np.unique(v):  # ties share their average rank
            tied = v == value
            r[tied] = r[tied].mean()
        return r - r.mean()

    rx, ry = ranks(x), ranks(y)
    denominator = math.sqrt(float((rx * rx).sum() * (ry * ry).sum()))
    return float((rx * ry).sum()) / denominator if denominator else math.nan


def length_residuals(values: Sequence[float], lengths: Sequence[float]) -> list[float]:
    """``values`` with the linear effect of log(length) removed (least squares, intercept kept in the mean):
    comparing groups on these compares them at the same response length."""
    y = np.asarray(values, dtype=np.float64)
    x = np.log(np.maximum(np.asarray(lengths, dtype=np.float64), 1.0))
    if y.size < 3 or np.ptp(x) == 0:
        return y.tolist()
    slope = float(((x - x.mean()) * (y - y.mean())).sum() / ((x - x.mean()) ** 2).sum())
    return (y - slope * (x - x.mean())).tolist()
