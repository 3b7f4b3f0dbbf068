"""A report's matplotlib figures, each returned as a PNG ``Figure`` (or ``None`` when there is nothing to draw):
per-round line panels, influence histograms per round, held-out losses and differences with confidence intervals,
the teacher shift per teacher version, and the per-seed and pooled forest plot. PNGs carry no version stamp, so the
same data gives the same bytes on every run.
"""

from __future__ import annotations

import io
import math

from cli.report.document import Figure
from cli.report.wording import NULLS, comparison_label, seed_order


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # no display; must come before pyplot is imported
    import matplotlib.pyplot as plt

    return plt


def _png(fig, name: str, alt: str) -> Figure:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100, metadata={"Software": None})  # no version stamp: same bytes every run
    _pyplot().close(fig)
    return Figure(name, buffer.getvalue(), alt)


def _errors(items: list[dict], low: str = "ci_low", high: str = "ci_high"):
    """Means and asymmetric error-bar lengths (0 where a CI bound is missing)."""
    means = [item.get("mean", math.nan) if item.get("mean") is not None else math.nan for item in items]
    below = [max(0.0, m - item[low]) if item.get(low) is not None else 0.0 for m, item in zip(means, items)]
    above = [max(0.0, item[high] - m) if item.get(high) is not None else 0.0 for m, item in zip(means, items)]
    return means, [below, above]


def series_figure(name: str, alt: str, panels: list[tuple]) -> Figure | None:
    """Line panels ``(title, ylabel, {label: (xs, ys)})`` over rounds; series without a value are dropped."""
    panels = [(t, y, {k: v for k, v in s.items() if any(p is not None for p in v[1])}) for t, y, s in panels]
    panels = [p for p in panels if p[2]]
    if not panels:
        return None
    plt = _pyplot()
    from matplotlib.ticker import MaxNLocator

    fig, axes = plt.subplots(1, len(panels), figsize=(4.6 * len(panels), 3.2), squeeze=False)
    for ax, (title, ylabel, series) in zip(axes[0], panels):
        for label, (xs, ys) in series.items():
            points = [(x, y) for x, y in zip(xs, ys) if y is not None]
            ax.plot([p[0] for p in points], [p[1] for p in points], "o-", label=label)
        ax.set(title=title, xlabel="round", ylabel=ylabel)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    return _png(fig, name, alt)


def _interval_axis(ax, labels: list[str], items: list[dict], colors: list[str], xlabel: str) -> None:
    """Points with CI bars, one row per label, a dashed line at 0."""
    means, err = _errors(items)
    for y, (m, lo, hi, color) in enumerate(zip(means, err[0], err[1], colors)):
        ax.errorbar([m], [y], xerr=[[lo], [hi]], fmt="o", color=color, capsize=3)
    ax.axvline(0, color="black", linestyle="--", linewidth=0.8)
    ax.set_yticks(range(len(labels)), labels)
    ax.set_ylim(len(labels) - 0.5, -0.5)  # first row on top
    ax.set_xlabel(xlabel)
    ax.grid(axis="x", alpha=0.3)


def influence_histograms(name: str, by_round: list[tuple[int, list[float], list[float]]]) -> Figure:
    import numpy as np

    plt = _pyplot()
    from matplotlib.ticker import MaxNLocator

    cols = min(3, len(by_round))
    nrows = math.ceil(len(by_round) / cols)
    fig, axes = plt.subplots(nrows, cols, figsize=(4.2 * cols, 3.0 * nrows), squeeze=False)
    for ax in axes.flat[len(by_round) :]:
        ax.set_visible(False)
    for ax, (k, raw, centred) in zip(axes.flat, by_round):
        edges = np.histogram_bin_edges(raw + centred, bins=15)  # shared bins so the two are comparable
        ax.hist(raw, bins=edges, alpha=0.55, label=f"raw (n={len(raw)})")
        if centred:
            ax.hist(centred, bins=edges, alpha=0.55, label=f"centred (n={len(centred)})")
        ax.axvline(0, color="black", linestyle="--", linewidth=0.8)
        ax.set(title=f"round {k}", xlabel="influence", ylabel="candidates")
        ax.yaxis.set_major_locator(MaxNLocator(integer=True))
        ax.legend(fontsize=8)
    fig.tight_layout()
    return _png(fig, name, "influence histograms per round (raw and centred)")


def heldout_figure(name: str, students: dict[str, dict], comparisons: dict[str, dict]) -> Figure | None:
    students = {k: v for k, v in students.items() if v.get("loss") is not None}
    if not students and not comparisons:
        return None
    plt = _pyplot()
    panels = int(bool(students)) + int(bool(comparisons))
    fig, axes = plt.subplots(
        1, panels, figsize=(5.2 * panels, 1.2 + 0.45 * max(len(students), len(comparisons), 3)), squeeze=False
    )
    axes = list(axes[0])
    if students:
        ax = axes.pop(0)
        ax.plot([s["loss"] for s in students.values()], range(len(students)), "o")
        ax.set_yticks(range(len(students)), list(students))
        ax.set_ylim(len(students) - 0.5, -0.5)
        ax.set(title="held-out loss per student", xlabel="loss (lower is better)")
        ax.grid(axis="x", alpha=0.3)
    if comparisons:
        ax = axes.pop(0)
        colors = ["grey" if k in NULLS else "C0" for k in comparisons]
        _interval_axis(
            ax,
            [comparison_label(k) for k in comparisons],
            list(comparisons.values()),
            colors,
            "difference in held-out loss (< 0: first is better)",
        )
        ax.set_title("differences with CI (grey: nulls)")
    fig.tight_layout()
    return _png(fig, name, "held-out loss per student and differences with confidence intervals")


def shift_figure(name: str, by_series: dict[str, list[dict]]) -> Figure | None:
    """Mean influence and positive share per teacher version with CI bars; one series per seed (offset sideways)."""
    by_series = {k: sorted(v, key=lambda x: x.get("version", 0)) for k, v in by_series.items() if v}
    if not by_series:
        return None
    plt = _pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(9.5, 3.3))
    width = 0.25 / max(1, len(by_series) - 1)
    for i, (label, versions) in enumerate(by_series.items()):
        xs = [v.get("version", 0) + (i - (len(by_series) - 1) / 2) * width for v in versions]
        for ax, mean, low, high in (
            (axes[0], "influence_mean", "ci_low", "ci_high"),
            (axes[1], "positive_share", "positive_share_ci_low", "positive_share_ci_high"),
        ):
            means, err = _errors(
                [{"mean": v.get(mean), "lo": v.get(low), "hi": v.get(high)} for v in versions], "lo", "hi"
            )
            ax.errorbar(xs, means, yerr=err, fmt="o-", capsize=3, label=label or None)
    for ax, title in zip(axes, ("mean influence", "share of helpful candidates")):
        ax.set(title=f"{title} per teacher version", xlabel="teacher version")
        ax.set_xticks(sorted({v.get("version", 0) for vs in by_series.values() for v in vs}))
        ax.grid(alpha=0.3)
        if len(by_series) > 1 or next(iter(by_series)):
            ax.legend(fontsize=8)
    axes[0].axhline(0, color="black", linestyle="--", linewidth=0.8)
    fig.tight_layout()
    return _png(fig, name, "mean influence and positive share per teacher version with confidence intervals")


def forest_figure(name: str, per_seed: dict, pooled: dict) -> Figure | None:
    keys = [
        k
        for k in ("montessori_vs_self_instruct", "montessori_vs_base", *NULLS)
        if k in pooled or any(k in (s.get("comparisons") or {}) for s in per_seed.values())
    ]
    if not keys:
        return None
    plt = _pyplot()
    seeds = seed_order(per_seed)
    labels = [f"seed {s}" for s in seeds] + ["pooled"]
    fig, axes = plt.subplots(
        1, len(keys), figsize=(3.6 * len(keys), 0.8 + 0.4 * len(labels)), sharex=True, sharey=True, squeeze=False
    )
    for ax, key in zip(axes[0], keys):
        items = [(per_seed[s].get("comparisons") or {}).get(key, {}) for s in seeds] + [pooled.get(key, {})]
        base = "grey" if key in NULLS else "C0"
        _interval_axis(ax, labels, items, [base] * len(seeds) + ["C3"], "difference in loss")
        ax.set_title(comparison_label(key), fontsize=9)
    fig.tight_layout()
    return _png(fig, name, "forest plot: per-seed and pooled differences in held-out loss with CIs (grey: nulls)")
