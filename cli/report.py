"""``montessori loop report``: a loop summary, or an experiment, rendered as a report.

Writes ``report.md`` with PNG charts beside it and a self-contained ``report.html`` (the same
PNGs as base64 data URIs). Every summary section is optional (a running loop has rounds but no
evaluation yet); a missing one is reported as "not available", never as an error. Held-out
differences are "first − second" in loss (``montessori_vs_base`` = Montessori − base), so a
NEGATIVE value means the first-named student is better.
"""
from __future__ import annotations

import argparse
import base64
import html
import io
import json
import math
import os
import uuid
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote

from common.errors import InvalidArgument, MontessoriError, NotFound

NA = "not available"
EFFECTS = ("montessori_vs_self_instruct", "montessori_vs_base", "self_instruct_vs_base")
NULLS = ("null_sft_seed", "null_data_draw")
_NAMES = {"montessori": "Montessori", "self_instruct": "Self-Instruct", "base": "base"}
_NULL_NAMES = {"null_sft_seed": "null: same data, another SFT seed", "null_data_draw": "null: another data draw"}


# ---------------------------------------------------------------- loading


def load_summary(source: str, artifacts: str | None = None):
    """``(summary, store)`` for a loop id (read from ``artifacts``) or a summary.json path / file:// / s3:// URI.

    A loop that has not finished has no summary.json yet: its summary is built from ``rounds.jsonl``.
    ``store`` is where the summary's artifact URIs (scores) are read from, or ``None`` (read file:// URIs directly).
    """
    if "://" in source or source.endswith(".json") or Path(source).is_file():
        return _summary_from_uri(source)
    return _summary_from_loop(source, artifacts)


def _summary_from_uri(source: str):
    from common.artifacts import LocalArtifactStore, open_store, validate_key

    if source.startswith("s3://"):
        bucket, _, key = source.removeprefix("s3://").partition("/")
        if not bucket or not key:
            raise InvalidArgument(f"expected s3://<bucket>/<key of summary.json>, got {source!r}", field="summary")
        store = open_store(f"s3://{bucket}")
        key = validate_key(key, field="summary")
        if not store.exists(key):
            raise NotFound(f"no summary at {source}", field="summary")
        return _checked(json.loads(store.get_bytes(key)), source), store
    if "://" in source and not source.startswith("file://"):
        raise InvalidArgument(f"unsupported summary URI {source!r} (use a path, file:// or s3://)", field="summary")
    path = Path(unquote(source.removeprefix("file://"))).resolve()
    if not path.is_file():
        raise NotFound(f"no summary file {path}", field="summary")
    try:
        summary = _checked(json.loads(path.read_text(encoding="utf-8")), source)
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise InvalidArgument(f"{path}: not a JSON summary ({err})", field="summary") from None
    # <root>/loops/<id>/summary.json: open the store at <root> so reads are digest-checked.
    store = LocalArtifactStore(path.parents[2]) if path.parent.parent.name == "loops" else None
    return summary, store


def _summary_from_loop(loop_id: str, artifacts: str | None):
    from common.artifacts import open_store, validate_key
    from common.envs import Env

    if "/" in loop_id:
        raise InvalidArgument(f"invalid loop id {loop_id!r}", field="loop")
    prefix = validate_key(f"loops/{loop_id}", field="loop")
    artifacts = artifacts or Env.read().artifacts_dir
    if "://" not in artifacts and not Path(artifacts).is_dir():  # open_store would create the folder
        raise NotFound(f"artifact store {artifacts} does not exist", field="artifacts")
    store = open_store(artifacts)
    if store.exists(f"{prefix}/summary.json"):
        summary = _checked(store.get_json(f"{prefix}/summary.json"), store.uri(f"{prefix}/summary.json"))
        summary.setdefault("summary_uri", store.uri(f"{prefix}/summary.json"))
        return summary, store
    if not store.exists(f"{prefix}/rounds.jsonl"):
        raise NotFound(f"no loop {loop_id!r} in {store.root_uri} (neither summary.json nor rounds.jsonl)", field="loop")
    state = store.get_json(f"{prefix}/state.json") if store.exists(f"{prefix}/state.json") else {}
    summary = {"loop_id": loop_id, "status": state.get("status", "running"), "store": store.uri(prefix),
               "iterations": store.get_jsonl(f"{prefix}/rounds.jsonl")}
    return summary, store


def _checked(summary, where: str) -> dict:
    if not isinstance(summary, dict):
        raise InvalidArgument(f"{where}: a summary must be a JSON object", field="summary")
    return summary


def load_experiment_summaries(experiment: dict, artifacts: str | None = None):
    """``(summaries by seed, store)`` for an experiment's loops; a loop whose summary cannot be found is left out."""
    summaries, store = {}, None
    for seed, loop in sorted((experiment.get("loops") or {}).items()):
        try:
            summaries[seed], found = load_summary(loop.get("summary_uri") or loop["loop_id"], artifacts)
        except (MontessoriError, KeyError):
            continue
        store = store or found
    return summaries, store


def _read_rows(uri: str | None, store) -> tuple[list[dict] | None, str]:
    """Rows of a JSONL artifact, or ``(None, why not)``: a report shows what it can."""
    from common.jsonl import read_jsonl

    if not uri:
        return None, "no URI recorded"
    try:
        if store is not None:
            try:
                key = store.key_of(uri)
            except InvalidArgument:
                key = None
            if key is not None:
                return (store.get_jsonl(key), "") if store.exists(key) else (None, f"{uri} does not exist")
        if uri.startswith("file://"):
            path = Path(unquote(uri.removeprefix("file://")))
            return (read_jsonl(path, allow_empty=True), "") if path.is_file() else (None, f"{uri} does not exist")
    except (MontessoriError, OSError) as err:
        return None, str(err)
    return None, f"{uri} is outside the artifact store"


# ---------------------------------------------------------------- text


def _num(value) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def _pct(value) -> str:
    return "-" if value is None else f"{value:.0%}"


def ci_verdict(low, high) -> str:
    """Whether the interval [low, high] excludes 0 (a difference is shown) or includes it."""
    if low is None or high is None or any(math.isnan(v) for v in (low, high)):
        return "CI not available"
    return "CI includes 0" if low <= 0 <= high else "CI excludes 0"


def _ci(item: dict, low: str = "ci_low", high: str = "ci_high") -> str:
    return f"[{_num(item.get(low))}, {_num(item.get(high))}]"


def _pair_names(key: str) -> tuple[str, str] | None:
    first, sep, second = key.partition("_vs_")
    return (_NAMES.get(first, first), _NAMES.get(second, second)) if sep else None


def _label(key: str) -> str:
    names = _pair_names(key)
    return f"{names[0]} − {names[1]}" if names else _NULL_NAMES.get(key, key)


def comparison_sentence(key: str, item: dict) -> str:
    """One plain sentence: the difference, its CI and what the CI says."""
    verdict = ci_verdict(item.get("ci_low"), item.get("ci_high"))
    head = (f"{_label(key)}: {_num(item.get('mean'))}, CI {_ci(item)} "
            f"({_num(item.get('units'))} units, {_num(item.get('rows'))} rows): {verdict}")
    names = _pair_names(key)
    if verdict != "CI excludes 0":
        return head + ("." if names is None else ": no difference shown.")
    if names is None:  # two students that differ only by chance
        return head + ": chance alone moves the loss this much; read effects of this size with care."
    better = names[0] if item["mean"] < 0 else names[1]
    return head + f": {better} has the lower held-out loss."


# ---------------------------------------------------------------- document


@dataclass(frozen=True)
class Figure:
    name: str  # file name beside report.md
    png: bytes
    alt: str


class Doc:
    """Report blocks rendered to Markdown and to HTML from one list, so the two never disagree."""

    def __init__(self):
        self.blocks: list[tuple] = []
        self.figures: list[Figure] = []

    def heading(self, level: int, text: str) -> None:
        self.blocks.append(("h", level, text))

    def para(self, text: str) -> None:
        self.blocks.append(("p", text))

    def bullets(self, items) -> None:
        items = list(items)
        if items:
            self.blocks.append(("ul", items))

    def table(self, headers: list[str], rows: list[list]) -> None:
        self.blocks.append(("table", headers, [[_num(c) if not isinstance(c, str) else c for c in r] for r in rows]))

    def figure(self, figure: Figure | None, missing: str = "") -> None:
        """Add ``figure``; without one, say ``missing: not available`` (when ``missing`` is given)."""
        if figure is None:
            if missing:
                self.para(f"{missing}: {NA}.")
            return
        if any(f.name == figure.name for f in self.figures):
            raise ValueError(f"two figures named {figure.name}")
        self.figures.append(figure)
        self.blocks.append(("img", figure))

    def markdown(self) -> str:
        cell = lambda text: str(text).replace("|", "\\|").replace("\n", " ")  # noqa: E731
        out = []
        for kind, *rest in self.blocks:
            if kind == "h":
                out.append(f"{'#' * rest[0]} {rest[1]}")
            elif kind == "p":
                out.append(rest[0])
            elif kind == "ul":
                out.append("\n".join(f"- {item}" for item in rest[0]))
            elif kind == "table":
                headers, rows = rest
                lines = ["| " + " | ".join(map(cell, headers)) + " |", "|" + "---|" * len(headers)]
                out.append("\n".join(lines + ["| " + " | ".join(map(cell, row)) + " |" for row in rows]))
            else:
                out.append(f"![{rest[0].alt}]({rest[0].name})")
        return "\n\n".join(out) + "\n"

    def html(self, title: str) -> str:
        esc = html.escape
        out = ["<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">', f"<title>{esc(title)}</title>",
               "<style>body{font-family:sans-serif;max-width:72em;margin:2em auto;padding:0 1em}"
               "table{border-collapse:collapse;margin:1em 0;font-size:90%}th,td{border:1px solid #ccc;padding:.2em .5em}"
               "th{background:#f3f3f3}td{text-align:right}img{max-width:100%}</style></head><body>"]
        for kind, *rest in self.blocks:
            if kind == "h":
                out.append(f"<h{rest[0]}>{esc(rest[1])}</h{rest[0]}>")
            elif kind == "p":
                out.append(f"<p>{esc(rest[0])}</p>")
            elif kind == "ul":
                out.append("<ul>" + "".join(f"<li>{esc(str(i))}</li>" for i in rest[0]) + "</ul>")
            elif kind == "table":
                headers, rows = rest
                head = "".join(f"<th>{esc(str(h))}</th>" for h in headers)
                body = "".join("<tr>" + "".join(f"<td>{esc(str(c))}</td>" for c in row) + "</tr>" for row in rows)
                out.append(f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>")
            else:
                data = base64.b64encode(rest[0].png).decode()
                out.append(f'<figure><img alt="{esc(rest[0].alt)}" src="data:image/png;base64,{data}"></figure>')
        return "\n".join(out + ["</body></html>", ""])


def _atomic_write(path: Path, data: bytes) -> Path:
    staging = path.with_name(f".{path.name}.tmp-{uuid.uuid4().hex}")
    try:
        staging.write_bytes(data)
        os.replace(staging, path)  # readers see the old file or the new one, never half of one
    finally:
        staging.unlink(missing_ok=True)
    return path


def _write(doc: Doc, out_dir: Path, title: str) -> dict:
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    # Images first, pages last: a page never points at an image that is not there yet.
    images = [_atomic_write(out_dir / f.name, f.png) for f in doc.figures]
    md = _atomic_write(out_dir / "report.md", doc.markdown().encode())
    page = _atomic_write(out_dir / "report.html", doc.html(title).encode())
    return {"html": page, "md": md, "images": images}


# ---------------------------------------------------------------- charts


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


def _series_figure(name: str, alt: str, panels: list[tuple]) -> Figure | None:
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


# ---------------------------------------------------------------- loop report


def rounds_table(iterations: list[dict]) -> tuple[list[str], list[list]]:
    """The per-round table: one row per finished round."""
    headers = ["round", "candidates", "groups", "pairs", "influence mean", "min", "max", "positive raw",
               "positive centred", "DPO margin", "DPO accuracy", "held-out margin", "held-out accuracy",
               "held-out pairs", "student ref loss", "teacher", "influence mode", "seconds"]
    rows = [[r.get("iteration"), r.get("candidates"), r.get("groups"), r.get("pairs"), r.get("influence_mean"),
             r.get("influence_min"), r.get("influence_max"), _pct(r.get("positive_share_raw")),
             _pct(r.get("positive_share_centred")), r.get("dpo_reward_margin"), r.get("dpo_reward_accuracy"),
             r.get("heldout_reward_margin"), r.get("heldout_reward_accuracy"), r.get("heldout_pairs"),
             r.get("student_reference_loss"), r.get("teacher_version") or "-", r.get("influence_mode") or "-",
             r.get("seconds")] for r in iterations]
    return headers, rows


def _status(summary: dict) -> str:
    if summary.get("status"):
        return summary["status"]
    if summary.get("stopped"):
        return "stopped"
    return "succeeded" if summary.get("evaluation") else "running"


def _influence_values(rows: list[dict]) -> tuple[list[float], list[float]]:
    """Raw (official) and centred scores; older rows carry only ``influence`` (raw)."""
    raw = [r.get("influence_raw", r.get("influence")) for r in rows]
    centred = [r.get("influence_centred") for r in rows]
    keep = lambda values: [float(v) for v in values if isinstance(v, (int, float))]  # noqa: E731
    return keep(raw), keep(centred)


def _histograms(name: str, by_round: list[tuple[int, list[float], list[float]]]) -> Figure:
    import numpy as np

    plt = _pyplot()
    from matplotlib.ticker import MaxNLocator

    cols = min(3, len(by_round))
    nrows = math.ceil(len(by_round) / cols)
    fig, axes = plt.subplots(nrows, cols, figsize=(4.2 * cols, 3.0 * nrows), squeeze=False)
    for ax in axes.flat[len(by_round):]:
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


def _loop_sections(doc: Doc, summary: dict, store, *, level: int, prefix: str) -> None:
    iterations = sorted(summary.get("iterations") or [], key=lambda r: r.get("iteration", 0))
    loop_uri = summary.get("store") or ""
    rounds = [r.get("iteration") for r in iterations]
    sub = level + 1

    doc.heading(level, "Rounds")
    if iterations:
        doc.table(*rounds_table(iterations))
    else:
        doc.para(f"Per-round results: {NA} (no round has finished).")

    doc.heading(sub, "Influence per round")
    by_round, missing = [], []
    for r in iterations:
        uri = r.get("scores_uri") or (f"{loop_uri}/iter-{r.get('iteration')}/scores/scores.jsonl" if loop_uri else None)
        rows, why = _read_rows(uri, store)
        raw, centred = _influence_values(rows or [])
        if raw:
            by_round.append((r.get("iteration"), raw, centred))
        else:
            missing.append(f"round {r.get('iteration')}: scores {NA} ({why or 'no scores'})")
    doc.para("Per-candidate local data influence (positive = the candidate lowered the student's reference loss). "
             "Raw scores include the step every candidate shares; centred scores remove it.")
    if by_round:
        doc.figure(_histograms(f"{prefix}influence_histograms.png", by_round))
    else:
        doc.para(f"Influence histograms: {NA}.")
    doc.bullets(missing)

    doc.heading(sub, "Share of helpful candidates")
    fig = _series_figure(f"{prefix}positive_share.png", "share of candidates with positive influence per round", [
        ("positive influence", "share of candidates",
         {"raw": (rounds, [r.get("positive_share_raw") for r in iterations]),
          "centred": (rounds, [r.get("positive_share_centred") for r in iterations])})])
    doc.figure(fig, "Positive share per round")

    doc.heading(sub, "Teacher DPO")
    fig = _series_figure(f"{prefix}dpo.png", "DPO reward margin and accuracy per round", [
        ("reward margin", "chosen − rejected reward",
         {"train": (rounds, [r.get("dpo_reward_margin") for r in iterations]),
          "held-out": (rounds, [r.get("heldout_reward_margin") for r in iterations])}),
        ("reward accuracy", "share of pairs ranked right",
         {"train": (rounds, [r.get("dpo_reward_accuracy") for r in iterations]),
          "held-out": (rounds, [r.get("heldout_reward_accuracy") for r in iterations])})])
    doc.figure(fig, "DPO reward margin and accuracy")

    doc.heading(sub, "Student reference loss")
    fig = _series_figure(f"{prefix}student_loss.png", "student reference loss per round", [
        ("student reference loss", "loss", {"student": (rounds, [r.get("student_reference_loss") for r in iterations])})])
    doc.figure(fig, "Student reference loss")

    _evaluation_section(doc, summary.get("evaluation") or {}, level=level, prefix=prefix)
    _teacher_shift_section(doc, (summary.get("evaluation") or {}).get("teacher_shift"), level=level, prefix=prefix)

    doc.heading(level, "Teacher-version lineage")
    if iterations:
        short = lambda uri: _relative(uri, loop_uri)  # noqa: E731
        doc.para(f"Which teacher wrote each round's training data; ./ paths are under {loop_uri or 'the loop'}.")
        doc.table(["round", "teacher version", "adapters", "training data", "scores", "pairs"],
                  [[r.get("iteration"), r.get("teacher_version") or "-",
                    ", ".join(short(a) for a in r.get("teacher_adapters") or []) or "-",
                    short(r.get("train_data_uri")), short(r.get("scores_uri")), short(r.get("pairs_uri"))]
                   for r in iterations])
    else:
        doc.para(f"Lineage: {NA}.")


def _relative(uri: str | None, base: str) -> str:
    """``uri`` shortened to ``./rest`` when it lies under ``base`` (the loop's URIs are long and alike)."""
    if not uri:
        return "-"
    return f"./{uri[len(base) + 1:]}" if base and uri.startswith(base + "/") else uri


def _students(evaluation: dict) -> dict[str, dict]:
    """Each student's held-out loss; older summaries carry only the flat ``*_student_eval_loss`` keys."""
    if evaluation.get("students"):
        return dict(sorted(evaluation["students"].items()))
    flat = {"base": "base_student_eval_loss", "montessori": "montessori_student_eval_loss",
            "self_instruct": "baseline_student_eval_loss"}
    return {name: {"loss": evaluation[key]} for name, key in flat.items() if evaluation.get(key) is not None}


def _evaluation_section(doc: Doc, evaluation: dict, *, level: int, prefix: str) -> None:
    doc.heading(level, "Held-out comparison")
    students = _students(evaluation)
    comparisons = evaluation.get("comparisons") or {}
    if not students and not comparisons:
        doc.para(f"Held-out evaluation: {NA} (the loop has not been evaluated yet).")
        return
    doc.para(f"Held-out rows: {_num(evaluation.get('eval_rows'))}; data draws per arm: {_num(evaluation.get('draws'))}. "
             "Lower loss is better. Differences are first − second in held-out loss: a NEGATIVE difference means the "
             "first-named student (Montessori in montessori_vs_*) is better. Nulls compare students that differ only by "
             "chance; an effect means something only when it is clearly larger than the nulls.")
    if students:
        doc.table(["student", "held-out loss", "teacher version", "training data"],
                  [[name, s.get("loss"), s.get("teacher_version") or "-", s.get("train_data_uri") or "-"]
                   for name, s in students.items()])
    keys = [k for k in EFFECTS if k in comparisons] + [k for k in NULLS if k in comparisons]
    keys += sorted(k for k in comparisons if k not in keys)
    doc.figure(_heldout_figure(f"{prefix}heldout.png", students, {k: comparisons[k] for k in keys}))
    if keys:
        doc.table(["comparison", "mean", "CI", "units", "rows", "vs 0"],
                  [[_label(k), comparisons[k].get("mean"), _ci(comparisons[k]), comparisons[k].get("units"),
                    comparisons[k].get("rows"), ci_verdict(comparisons[k].get("ci_low"), comparisons[k].get("ci_high"))]
                   for k in keys])
        doc.bullets(comparison_sentence(k, comparisons[k]) for k in keys)
    else:
        doc.para(f"Comparisons with confidence intervals: {NA}.")
    per_category = evaluation.get("per_category") or {}
    if per_category:
        doc.heading(level + 1, "Per category")
        doc.table(["category", "comparison", "mean", "CI", "vs 0"],
                  [[cat, _label(k), c.get("mean"), _ci(c), ci_verdict(c.get("ci_low"), c.get("ci_high"))]
                   for cat, comps in sorted(per_category.items()) for k, c in sorted(comps.items())])


def _heldout_figure(name: str, students: dict[str, dict], comparisons: dict[str, dict]) -> Figure | None:
    students = {k: v for k, v in students.items() if v.get("loss") is not None}
    if not students and not comparisons:
        return None
    plt = _pyplot()
    panels = int(bool(students)) + int(bool(comparisons))
    fig, axes = plt.subplots(1, panels, figsize=(5.2 * panels, 1.2 + 0.45 * max(len(students), len(comparisons), 3)),
                             squeeze=False)
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
        _interval_axis(ax, [_label(k) for k in comparisons], list(comparisons.values()), colors,
                       "difference in held-out loss (< 0: first is better)")
        ax.set_title("differences with CI (grey: nulls)")
    fig.tight_layout()
    return _png(fig, name, "held-out loss per student and differences with confidence intervals")


def _teacher_shift_section(doc: Doc, shift: dict | None, *, level: int, prefix: str) -> None:
    doc.heading(level, "Teacher shift")
    versions = (shift or {}).get("versions") or []
    differences = (shift or {}).get("differences") or []
    if not versions and not differences:
        doc.para(f"Teacher shift: {NA}.")
        return
    doc.para("Influence on one fixed student of data written by each teacher version: a teacher that learned to write "
             f"helpful data scores higher. Student: {shift.get('student_uri', '-')}; samples: {_num(shift.get('samples'))}.")
    if versions:
        doc.table(["version", "teacher", "samples", "influence mean", "CI", "positive share", "CI", "length Spearman"],
                  [[v.get("version"), v.get("teacher") or "-", v.get("samples"), v.get("influence_mean"),
                    _ci(v), _pct(v.get("positive_share")),
                    f"[{_pct(v.get('positive_share_ci_low'))}, {_pct(v.get('positive_share_ci_high'))}]",
                    v.get("length_spearman")] for v in versions])
        doc.figure(_shift_figure(f"{prefix}teacher_shift.png", {"": versions}))
    if differences:
        doc.table(["version", "vs", "influence difference", "CI", "vs 0", "positive-share difference", "CI", "vs 0",
                   "length-controlled", "CI", "vs 0"],
                  [[d.get("version"), d.get("vs"), d.get("mean"), _ci(d), ci_verdict(d.get("ci_low"), d.get("ci_high")),
                    d.get("positive_share"), _ci(d, "positive_share_ci_low", "positive_share_ci_high"),
                    ci_verdict(d.get("positive_share_ci_low"), d.get("positive_share_ci_high")),
                    d.get("length_controlled_mean"), _ci(d, "length_controlled_ci_low", "length_controlled_ci_high"),
                    ci_verdict(d.get("length_controlled_ci_low"), d.get("length_controlled_ci_high"))]
                   for d in differences])
        doc.bullets(f"version {d.get('version')} vs {d.get('vs')}: mean influence changes by {_num(d.get('mean'))} "
                    f"{_ci(d)}, {ci_verdict(d.get('ci_low'), d.get('ci_high'))}; length-controlled "
                    f"{_num(d.get('length_controlled_mean'))}, "
                    f"{ci_verdict(d.get('length_controlled_ci_low'), d.get('length_controlled_ci_high'))}."
                    for d in differences)
    if shift.get("length_spearman_pooled") is not None:
        doc.para(f"Spearman correlation of influence with response length (pooled): {_num(shift['length_spearman_pooled'])}.")


def _shift_figure(name: str, by_series: dict[str, list[dict]]) -> Figure | None:
    """Mean influence and positive share per teacher version with CI bars; one series per seed (offset sideways)."""
    by_series = {k: sorted(v, key=lambda x: x.get("version", 0)) for k, v in by_series.items() if v}
    if not by_series:
        return None
    plt = _pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(9.5, 3.3))
    width = 0.25 / max(1, len(by_series) - 1)
    for i, (label, versions) in enumerate(by_series.items()):
        xs = [v.get("version", 0) + (i - (len(by_series) - 1) / 2) * width for v in versions]
        for ax, mean, low, high in ((axes[0], "influence_mean", "ci_low", "ci_high"),
                                    (axes[1], "positive_share", "positive_share_ci_low", "positive_share_ci_high")):
            means, err = _errors([{"mean": v.get(mean), "lo": v.get(low), "hi": v.get(high)} for v in versions], "lo", "hi")
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


def render_loop_report(summary: dict, out_dir: Path, *, store=None) -> dict:
    """Write ``report.md`` + PNGs and a self-contained ``report.html`` for one loop into ``out_dir``."""
    title = f"Montessori-Instruct loop {summary.get('loop_id', '?')}"
    doc = Doc()
    doc.heading(1, title)
    doc.para(f"Status: {_status(summary)}; rounds finished: {len(summary.get('iterations') or [])}; "
             f"wall time: {_num(summary.get('seconds'))} s; artifacts: {summary.get('store') or '-'}.")
    _loop_sections(doc, summary, store, level=2, prefix="")
    return _write(doc, Path(out_dir), title)


# ---------------------------------------------------------------- experiment report


def _seed_order(keys) -> list[str]:
    return sorted(keys, key=lambda s: (0, int(s), "") if str(s).isdigit() else (1, 0, str(s)))


_VERDICTS = {
    "montessori_below_self_instruct_seeds": lambda v: f"Montessori's held-out loss is below Self-Instruct's in {v} seeds.",
    "pooled_ci_excludes_zero": lambda v: "The pooled CI of Montessori − Self-Instruct "
                                         + ("excludes 0." if v else "includes 0: no difference shown."),
    "both_below_base": lambda v: "Montessori and Self-Instruct students are both below the base student: "
                                 + ("yes." if v else "no."),
    "helpful_share_rises": lambda v: "The share of helpful candidates rises with the teacher version: "
                                     + ("yes." if v else "no."),
}


def _forest_figure(name: str, per_seed: dict, pooled: dict) -> Figure | None:
    keys = [k for k in ("montessori_vs_self_instruct", "montessori_vs_base", *NULLS)
            if k in pooled or any(k in (s.get("comparisons") or {}) for s in per_seed.values())]
    if not keys:
        return None
    plt = _pyplot()
    seeds = _seed_order(per_seed)
    labels = [f"seed {s}" for s in seeds] + ["pooled"]
    fig, axes = plt.subplots(1, len(keys), figsize=(3.6 * len(keys), 0.8 + 0.4 * len(labels)), sharex=True,
                             sharey=True, squeeze=False)
    for ax, key in zip(axes[0], keys):
        items = [(per_seed[s].get("comparisons") or {}).get(key, {}) for s in seeds] + [pooled.get(key, {})]
        base = "grey" if key in NULLS else "C0"
        _interval_axis(ax, labels, items, [base] * len(seeds) + ["C3"], "difference in loss")
        ax.set_title(_label(key), fontsize=9)
    fig.tight_layout()
    return _png(fig, name, "forest plot: per-seed and pooled differences in held-out loss with CIs (grey: nulls)")


def render_experiment_report(experiment: dict, out_dir: Path, *, summaries: dict[str, dict] | None = None,
                             store=None) -> dict:
    """Write an experiment's report (forest plot, teacher shift per seed, DPO table, verdict; each loop's
    sections when ``summaries`` by seed are given) into ``out_dir``."""
    title = f"Montessori-Instruct experiment {experiment.get('experiment', '?')}"
    per_seed = {str(k): v for k, v in (experiment.get("per_seed") or {}).items()}
    pooled = experiment.get("pooled") or {}
    doc = Doc()
    doc.heading(1, title)
    doc.para(f"Seeds: {', '.join(map(str, experiment.get('seeds') or [])) or '-'}; "
             f"data draws per arm: {_num(experiment.get('draws'))}. Differences are first − second in held-out loss: "
             "a NEGATIVE difference means the first-named student (Montessori) is better.")

    doc.heading(2, "Verdict")
    verdict = experiment.get("verdict") or {}
    if verdict:
        doc.bullets(_VERDICTS[k](v) if k in _VERDICTS else f"{k}: {_num(v)}" for k, v in verdict.items())
    else:
        doc.para(f"Verdict: {NA}.")

    doc.heading(2, "Held-out differences per seed and pooled")
    doc.figure(_forest_figure("forest.png", per_seed, pooled.get("comparisons") or {}))
    rows, sentences = [], []
    for key in (*EFFECTS, *NULLS):
        entries = [(f"seed {s}", (per_seed[s].get("comparisons") or {}).get(key)) for s in _seed_order(per_seed)]
        for who, item in entries + [("pooled", (pooled.get("comparisons") or {}).get(key))]:
            if item:
                rows.append([_label(key), who, item.get("mean"), _ci(item), item.get("units"),
                             ci_verdict(item.get("ci_low"), item.get("ci_high"))])
                if who == "pooled":
                    sentences.append("pooled " + comparison_sentence(key, item))
    if rows:
        doc.table(["comparison", "seed", "mean", "CI", "units", "vs 0"], rows)
        doc.bullets(sentences)
    else:
        doc.para(f"Held-out comparisons: {NA}.")
    if pooled.get("per_category"):
        doc.heading(3, "Pooled, per category")
        doc.table(["category", "comparison", "mean", "CI", "vs 0"],
                  [[cat, _label(k), c.get("mean"), _ci(c), ci_verdict(c.get("ci_low"), c.get("ci_high"))]
                   for cat, comps in sorted(pooled["per_category"].items()) for k, c in sorted(comps.items())])

    doc.heading(2, "Teacher shift per seed")
    shift_series = {f"seed {s}": (per_seed[s].get("teacher_shift") or {}).get("versions") or []
                    for s in _seed_order(per_seed)}
    fig = _shift_figure("teacher_shift_per_seed.png", shift_series)
    doc.figure(fig, "Teacher shift per seed")
    differences = (pooled.get("teacher_shift") or {}).get("differences") or []
    if differences:
        doc.table(["version", "vs", "pooled influence difference", "CI", "vs 0", "positive-share difference", "CI", "vs 0"],
                  [[d.get("version"), d.get("vs"), d.get("mean"), _ci(d), ci_verdict(d.get("ci_low"), d.get("ci_high")),
                    d.get("positive_share"), _ci(d, "positive_share_ci_low", "positive_share_ci_high"),
                    ci_verdict(d.get("positive_share_ci_low"), d.get("positive_share_ci_high"))] for d in differences])

    doc.heading(2, "Teacher DPO per seed")
    dpo = [[s, r.get("iteration"), r.get("pairs"), r.get("dpo_reward_margin"), r.get("dpo_reward_accuracy"),
            r.get("heldout_reward_margin"), r.get("heldout_reward_accuracy")]
           for s in _seed_order(per_seed) for r in per_seed[s].get("dpo") or []]
    if dpo:
        doc.table(["seed", "round", "pairs", "DPO margin", "DPO accuracy", "held-out margin", "held-out accuracy"], dpo)
    else:
        doc.para(f"DPO results: {NA}.")

    loops = experiment.get("loops") or {}
    if loops:
        doc.heading(2, "Loops")
        doc.table(["seed", "loop", "summary"], [[s, loops[s].get("loop_id", "-"), loops[s].get("summary_uri", "-")]
                                                for s in _seed_order(loops)])
    for seed in _seed_order(summaries or {}):
        summary = summaries[seed]
        doc.heading(2, f"Seed {seed}: loop {summary.get('loop_id', '?')} ({_status(summary)})")
        _loop_sections(doc, summary, store, level=3, prefix=f"seed-{seed}-")
    return _write(doc, Path(out_dir), title)


# ---------------------------------------------------------------- command


def add_parser(loop_actions) -> None:
    """``montessori loop report <loop-id-or-summary-uri> [--out DIR] [--artifacts STORE]``."""
    sub = loop_actions.add_parser("report", help="render a loop's summary as report.md + report.html with charts")
    sub.add_argument("source", metavar="LOOP_OR_SUMMARY",
                     help="a loop id, or a summary.json path / file:// / s3://bucket/key URI")
    sub.add_argument("--out", default=None, help="output folder (default reports/<loop-id>)")
    sub.add_argument("--artifacts", default=None, help="artifact store holding the loop (default MONTESSORI_ARTIFACTS_DIR)")


def run(args: argparse.Namespace) -> int:
    summary, store = load_summary(args.source, args.artifacts)
    out = Path(args.out or Path("reports") / str(summary.get("loop_id") or "loop"))
    paths = render_loop_report(summary, out, store=store)
    print(json.dumps({"html": str(paths["html"]), "md": str(paths["md"]), "images": [str(p) for p in paths["images"]]},
                     indent=2))
    return 0
