"""The quality gate's part of the run report (soulray/report.py): a table of the share of dialogues at
each score, per dimension, before the gate (the first rating of every judged dialogue) and after it (the
published ones), the calls per kind, and a chart of the same. Rendered from the manifest alone."""

from __future__ import annotations

from typing import Any


def gate_markdown(gate: dict[str, Any] | None, kinds: dict[str, dict[str, float]], published: int) -> list[str]:
    if not gate:
        return []
    rejected = ", ".join(f"{reason} {n}" for reason, n in sorted(gate["rejected"].items())) or "none"
    lines = ["", f"## Quality gate ({gate['rubric_version']}, threshold {gate['threshold']})", "",
             f"{gate['judged']} dialogues judged: {gate['passed']} passed, {gate['revised_passed']} passed after "
             f"their one revision, rejected: {rejected}; pass rate {gate['pass_rate']:.1%}.", "",
             "| dimension | mean before | mean after | scores before | scores after |", "|---|---|---|---|---|"]
    for dimension in gate["before"]:
        before, after = gate["before"][dimension], gate["after"].get(dimension, {})
        lines.append(f"| {dimension} | {_mean(before):.2f} | {_mean(after):.2f} | {_spread(before)} | {_spread(after)} |")
    if kinds:
        lines += ["", "| calls | paid | cached | prompt tokens | completion tokens | cost (USD) | share of cost | "
                      "per published dialogue |", "|---|---|---|---|---|---|---|---|"]
        total = sum(stats["cost_usd"] for stats in kinds.values()) or 1.0
        for kind, stats in kinds.items():
            calls = stats["paid"] + stats["cached"]
            lines.append(f"| {kind} | {stats['paid']:.0f} | {stats['cached']:.0f} | {stats['prompt_tokens']:.0f} | "
                         f"{stats['completion_tokens']:.0f} | {stats['cost_usd']:.4f} | {stats['cost_usd'] / total:.1%} | "
                         f"{calls / max(published, 1):.2f} |")
    return lines


def _mean(histogram: dict[str, int]) -> float:
    total = sum(histogram.values())
    return sum(int(score) * n for score, n in histogram.items()) / total if total else float("nan")


def _spread(histogram: dict[str, int]) -> str:
    total = sum(histogram.values()) or 1
    return " ".join(f"{score}: {n / total:.0%}" for score, n in sorted(histogram.items(), key=lambda i: int(i[0])))


def gate_chart(gate: dict[str, Any] | None) -> bytes | None:
    """Per dimension, the share of dialogues at each score before and after the gate; and the totals."""
    if not gate or not gate["before"]:
        return None
    from soulray.report import _figure, _png

    dimensions = [name for name in gate["before"] if name != "total"] + ["total"]
    plt, figure, _ = _figure(width=3.0 * len(dimensions), height=3.2)
    figure.clear()
    for index, dimension in enumerate(dimensions):
        axes = figure.add_subplot(1, len(dimensions), index + 1)
        for offset, when, colour in ((-0.2, "before", "#c44e52"), (0.2, "after", "#55a868")):
            histogram = gate[when].get(dimension, {})
            total = sum(histogram.values()) or 1
            scores = sorted(int(score) for score in histogram)
            axes.bar([score + offset for score in scores], [histogram[str(score)] / total for score in scores],
                     width=0.4, color=colour, label=when)
        axes.set_xticks(sorted({int(score) for when in ("before", "after") for score in gate[when].get(dimension, {})}))
        axes.set_title(dimension)
        axes.set_xlabel("score")
    figure.axes[0].set_ylabel("share of dialogues")
    figure.axes[0].legend()
    return _png(plt, figure)
