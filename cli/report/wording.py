"""How a report words things: numbers, percentages and confidence intervals as text, the names of students and
comparisons, the plain sentence that says what a comparison's CI shows, and the order seeds are listed in.

Held-out differences are "first − second" in loss (``montessori_vs_base`` = Montessori − base), so a NEGATIVE value
means the first-named student is better.
"""

from __future__ import annotations

import math

NA = "not available"
EFFECTS = ("montessori_vs_self_instruct", "montessori_vs_base", "self_instruct_vs_base")
NULLS = ("null_sft_seed", "null_data_draw")
_NAMES = {"montessori": "Montessori", "self_instruct": "Self-Instruct", "base": "base"}
_NULL_NAMES = {"null_sft_seed": "null: same data, another SFT seed", "null_data_draw": "null: another data draw"}


def number(value) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def percent(value) -> str:
    return "-" if value is None else f"{value:.0%}"


def ci_verdict(low, high) -> str:
    """Whether the interval [low, high] excludes 0 (a difference is shown) or includes it."""
    if low is None or high is None or any(math.isnan(v) for v in (low, high)):
        return "CI not available"
    return "CI includes 0" if low <= 0 <= high else "CI excludes 0"


def ci_range(item: dict, low: str = "ci_low", high: str = "ci_high") -> str:
    return f"[{number(item.get(low))}, {number(item.get(high))}]"


def _pair_names(key: str) -> tuple[str, str] | None:
    first, sep, second = key.partition("_vs_")
    return (_NAMES.get(first, first), _NAMES.get(second, second)) if sep else None


def comparison_label(key: str) -> str:
    names = _pair_names(key)
    return f"{names[0]} − {names[1]}" if names else _NULL_NAMES.get(key, key)


def comparison_sentence(key: str, item: dict) -> str:
    """One plain sentence: the difference, its CI and what the CI says."""
    verdict = ci_verdict(item.get("ci_low"), item.get("ci_high"))
    head = (
        f"{comparison_label(key)}: {number(item.get('mean'))}, CI {ci_range(item)} "
        f"({number(item.get('units'))} units, {number(item.get('rows'))} rows): {verdict}"
    )
    names = _pair_names(key)
    if verdict != "CI excludes 0":
        return head + ("." if names is None else ": no difference shown.")
    if names is None:  # two students that differ only by chance
        return head + ": chance alone moves the loss this much; read effects of this size with care."
    better = names[0] if item["mean"] < 0 else names[1]
    return head + f": {better} has the lower held-out loss."


def seed_order(keys) -> list[str]:
    return sorted(keys, key=lambda s: (0, int(s), "") if str(s).isdigit() else (1, 0, str(s)))
