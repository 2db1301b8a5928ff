"""The evaluation report: Table 1's layout with the paper's own rows beneath for reference, the
diagnostics the paper does not report, and a PNG plot of the metrics per model."""

from __future__ import annotations

import io
import math
from typing import Any

from soulray.evaluate.judge import DIMENSIONS

AUTOMATIC = [("B-1", "bleu-1"), ("B-2", "bleu-2"), ("B-3", "bleu-3"), ("B-4", "bleu-4"), ("R-1", "rouge-1"),
             ("R-2", "rouge-2"), ("R-L", "rouge-l")]
RATED = [("Con.", "content"), ("Emp.", "empathy"), ("Hel.", "helpfulness"), ("Saf.", "safety")]
COLUMNS = [label for label, _ in AUTOMATIC + RATED]

# SoulChat, Table 1 (poster; SoulChat, Chen et al., EMNLP 2023 Findings): B-1..4, R-1/2/L, Con., Emp., Hel., Saf.
PAPER_TABLE_1 = {
    "SoulChatCorpus": {
        "ChatGLM-6B": (22.73, 13.15, 8.04, 4.92, 25.33, 5.72, 18.84, 1.90, 1.55, 1.92, 1.0),
        "MeChat": (29.43, 17.12, 10.54, 6.71, 27.35, 6.27, 21.12, 1.83, 1.70, 1.78, 1.0),
        "ChatGPT": (27.98, 16.09, 9.93, 6.23, 27.39, 6.82, 21.92, 1.96, 1.62, 1.94, 1.0),
        "SoulChat": (33.78, 20.07, 12.86, 8.52, 31.47, 8.92, 26.57, 1.95, 1.84, 1.87, 1.0),
    },
    "SMILECHAT": {
        "ChatGLM-6B": (22.91, 13.56, 8.40, 5.15, 25.99, 5.95, 18.76, 1.81, 1.39, 1.84, 1.0),
        "MeChat": (30.63, 18.41, 11.59, 7.46, 28.92, 6.76, 21.59, 1.95, 1.74, 1.83, 1.0),
        "ChatGPT": (28.30, 16.48, 10.24, 6.40, 27.57, 6.71, 21.60, 1.95, 1.65, 1.97, 1.0),
        "SoulChat": (35.40, 21.39, 13.77, 9.02, 32.64, 9.17, 21.10, 1.93, 1.90, 1.85, 1.0),
    },
}


def markdown(*, test_set: str, metrics: dict[str, dict[str, float]], judge: dict[str, Any] | None,
             notes: list[str]) -> str:
    """The report: our rows in Table 1's layout, the paper's rows, then diagnostics and how it was made."""
    header = ["| Test set | Model | " + " | ".join(COLUMNS) + " |", "|---|---|" + "---|" * len(COLUMNS)]
    lines = ["# Evaluation", "", f"## Table 1 layout: {test_set}", "", *header]
    for index, (model, scores) in enumerate(metrics.items()):
        rated = [_judged(judge, model, dimension) for _, dimension in RATED]
        cells = [f"{scores[key]:.2f}" for _, key in AUTOMATIC] + rated
        lines.append(f"| {test_set if index == 0 else ''} | {model} | " + " | ".join(cells) + " |")
    lines += ["", "The paper's own rows (SoulChat, Table 1: ChatGLM-6B-sized models, 10,000 samples; ratings by "
              "three experts on 100 samples), for reference:", "", *header]
    for paper_set, rows in PAPER_TABLE_1.items():
        for index, (model, values) in enumerate(rows.items()):
            lines.append(f"| {paper_set if index == 0 else ''} | {model} | "
                         + " | ".join(f"{value:.2f}" for value in values) + " |")
    lines += ["", "## Diagnostics", "", "| Model | samples | failed | distinct-1 | distinct-2 | avg length | "
              "reference avg length | corpus B-4 |", "|---|---|---|---|---|---|---|---|"]
    for model, scores in metrics.items():
        lines.append(f"| {model} | {scores['samples']} | {scores.get('failed', 0)} | {scores['distinct-1']:.2f} | "
                     f"{scores['distinct-2']:.2f} | {scores['avg-length']:.1f} | {scores['reference-avg-length']:.1f} | "
                     f"{scores['corpus-bleu-4']:.2f} |")
    if judge:
        lines += ["", "## Judge", "", _judge_table(judge)]
    lines += ["", "## How these figures were made", "", *[f"- {note}" for note in notes]]
    return "\n".join(lines) + "\n"


def _judged(judge: dict[str, Any] | None, model: str, dimension: str) -> str:
    if not judge:
        return "–"
    mean = judge["models"][model][dimension]["mean"]
    return "–" if math.isnan(mean) else f"{mean:.2f}"


def _judge_table(judge: dict[str, Any]) -> str:
    level = round(100 * judge["confidence"])
    lines = [f"Means with {level}% bootstrap intervals (samples resampled); judge `{judge['judge_model']}`, rubric "
             f"`{judge['rubric_version']}`, {judge['runs']} runs of {judge['samples']} samples per model; "
             f"{judge['unrated']} ratings without scores after re-asks.", "",
             "| Model | " + " | ".join(label for label, _ in RATED) + " |", "|---|" + "---|" * len(RATED)]
    for model, dimensions in judge["models"].items():
        cells = [f"{d['mean']:.2f} [{d['low']:.2f}, {d['high']:.2f}]" if not math.isnan(d["mean"]) else "–"
                 for d in (dimensions[name] for _, name in RATED)]
        lines.append(f"| {model} | " + " | ".join(cells) + " |")
    lines += ["", "Agreement between judge runs (the paper's experts: Fleiss' κ 0.489 / 0.472 / 0.532 / 1.0):", "",
              "| | " + " | ".join(label for label, _ in RATED) + " |", "|---|" + "---|" * len(RATED),
              "| Fleiss' κ | " + " | ".join(_number(judge["agreement"][name]["fleiss_kappa"]) for _, name in RATED) + " |",
              "| identical ratings | " + " | ".join(_number(judge["agreement"][name]["exact"]) for _, name in RATED)
              + " |"]
    return "\n".join(lines)


def _number(value: float) -> str:
    return "–" if value is None or math.isnan(value) else f"{value:.3f}"


def plot(*, test_set: str, metrics: dict[str, dict[str, float]], judge: dict[str, Any] | None) -> bytes:
    """A PNG: BLEU/ROUGE per model beside the paper's rows for the closest test set; judge means with
    their intervals when there was a judge."""
    import matplotlib

    matplotlib.use("Agg")  # no display on workers and CI
    import matplotlib.pyplot as plt

    paper_set = "SMILECHAT" if "smile" in test_set.lower() else "SoulChatCorpus"
    series = {model: [scores[key] for _, key in AUTOMATIC] for model, scores in metrics.items()}
    reference = {f"paper {model}": values[:len(AUTOMATIC)] for model, values in PAPER_TABLE_1[paper_set].items()
                 if model in ("ChatGLM-6B", "SoulChat")}
    figure, axes = plt.subplots(1, 2 if judge else 1, figsize=(13 if judge else 8, 4.5), squeeze=False)
    _bars(axes[0][0], [label for label, _ in AUTOMATIC], {**series, **reference}, hatched=set(reference))
    axes[0][0].set_title(f"BLEU / ROUGE (×100) on {test_set}; paper rows: {paper_set}")
    if judge:
        rated = {model: [judge["models"][model][name]["mean"] for _, name in RATED] for model in judge["models"]}
        errors = {model: [(d["mean"] - d["low"], d["high"] - d["mean"])
                          for d in (judge["models"][model][name] for _, name in RATED)] for model in judge["models"]}
        _bars(axes[0][1], [label for label, _ in RATED], rated, errors=errors)
        axes[0][1].set_title(f"judge means ({round(100 * judge['confidence'])}% intervals)")
        axes[0][1].set_ylim(0, max(DIMENSIONS.values()) + 0.2)
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=110)
    plt.close(figure)
    return buffer.getvalue()


def _bars(axis, labels: list[str], series: dict[str, list[float]], *, hatched: set[str] = frozenset(),
          errors: dict[str, list[tuple[float, float]]] | None = None) -> None:
    width = 0.8 / max(1, len(series))
    for index, (name, values) in enumerate(series.items()):
        positions = [x + (index - (len(series) - 1) / 2) * width for x in range(len(labels))]
        yerr = None
        if errors:
            yerr = [[low for low, _ in errors[name]], [high for _, high in errors[name]]]
        axis.bar(positions, [0 if math.isnan(v) else v for v in values], width, label=name, yerr=yerr,
                 hatch="//" if name in hatched else None, alpha=0.5 if name in hatched else 1.0, capsize=2)
    axis.set_xticks(range(len(labels)))
    axis.set_xticklabels(labels)
    axis.legend(fontsize=7)
