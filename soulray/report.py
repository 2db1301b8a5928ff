"""The run report: what a person looks at after a run. A Markdown page plus PNG charts, rendered from
the manifest alone (counts, profile, usage, changes), so it costs no extra pass over the data and can
be re-rendered for any published version (`soulray report <version>`).

Charts: rows through each stage, drop reasons, topics before and after, utterances per dialogue, tokens
and cost per model and per key. Topic names are Chinese and servers rarely have a CJK font, so the
charts label topics T1…Tn and the Markdown table gives their names.
"""

from __future__ import annotations

import io
from typing import Any

from soulray.gate.report import gate_chart, gate_markdown
from soulray.store.manifest import Manifest

# Where each stage runs in the regenerate/clean jobs, so the flow chart reads left to right.
STAGE_ORDER = ["normalize", "filter_source", "dedup_source", "rewrite", "parse", "filter_dialogue", "dedup_dialogue",
               "quality_gate"]
TOP_TOPICS = 12


def render(manifest: Manifest) -> dict[str, bytes]:
    """The report's files, by path relative to the version's `report/` folder."""
    charts = {
        "flow.png": _flow_chart(manifest),
        "rejects.png": _rejects_chart(manifest),
        "topics.png": _topics_chart(manifest),
        "utterances.png": _utterances_chart(manifest),
        "usage.png": _usage_chart(manifest),
        "gate.png": gate_chart(manifest.stages.get("quality_gate")),  # soulray/gate/report.py
    }
    charts = {name: png for name, png in charts.items() if png is not None}
    return {"report.md": markdown(manifest, charts=list(charts)).encode("utf-8"), **charts}


def stage_flow(manifest: Manifest) -> list[tuple[str, int]]:
    """Rows still in the pipeline after each stage that dropped some, in pipeline order."""
    by_stage = manifest.counts.get("by_stage", {})
    stages = [s for s in STAGE_ORDER if s in by_stage] + sorted(set(by_stage) - set(STAGE_ORDER))
    remaining, flow = manifest.counts.get("input_rows", 0), [("input", manifest.counts.get("input_rows", 0))]
    for stage in stages:
        remaining -= sum(by_stage[stage].values())
        flow.append((stage, remaining))
    return flow


def markdown(manifest: Manifest, *, charts: list[str]) -> str:
    counts = manifest.counts
    lines = [f"# {manifest.dataset} {manifest.version}", "",
             f"Job `{manifest.job}`, run `{manifest.run_id}`, {manifest.created_at}; parent "
             f"`{manifest.parent_version or '—'}`; {manifest.code_version}; config `{manifest.config_hash[:12]}`.", "",
             f"**{counts.get('input_rows', 0)} rows in = {counts.get('output_rows', 0)} published + "
             f"{counts.get('rejected_rows', 0)} rejected.**", ""]
    if manifest.changes:
        changes = manifest.changes
        lines += ["## Changes against the parent version", "",
                  f"{changes['added']} rows added, {changes['removed']} removed, {changes['kept']} kept "
                  f"(rows are identified by content: a changed row is one removed and one added).", ""]
    lines += ["## Rows through each stage", "", "| after | rows |", "|---|---|"]
    lines += [f"| {stage} | {rows} |" for stage, rows in stage_flow(manifest)]
    lines += ["", "| stage | reason | rows |", "|---|---|---|"]
    for stage, reasons in counts.get("by_stage", {}).items():
        lines += [f"| {stage} | {reason} | {count} |" for reason, count in reasons.items()]
    lines += ["", "## Topics before and after", "", "| label | topic | rows in | published |", "|---|---|---|---|"]
    for label, topic, before, after in _topic_rows(manifest):
        lines.append(f"| {label} | {topic or '(none)'} | {before} | {after} |")
    lines += _repairs_and_markers(manifest)
    utterances = manifest.profile.get("utterances", {})
    if utterances:
        lines += ["", "## Utterances per dialogue", "", "| utterances | dialogues |", "|---|---|"]
        lines += [f"| {n} | {c} |" for n, c in sorted(utterances.items(), key=lambda item: int(item[0]))]
    lines += _usage_tables(manifest.usage)
    lines += gate_markdown(manifest.stages.get("quality_gate"), manifest.usage.get("kinds", {}),
                           counts.get("output_rows", 0))
    lines += ["", "## Time", "", "| phase | seconds |", "|---|---|"]
    lines += [f"| {phase} | {seconds:.1f} |" for phase, seconds in manifest.timings_s.items()]
    if charts:
        lines += ["", "## Charts", ""] + [f"![{name}]({name})" for name in charts]
    return "\n".join(lines) + "\n"


def _repairs_and_markers(manifest: Manifest) -> list[str]:
    """Published rows per repair, normalisation and review flag; each template marker's share of the
    input and of the published rows (soulray/filters/template.py, MARKERS)."""
    lines = []
    flags = manifest.profile.get("flags", {})
    if flags:
        lines += ["", "## Repairs, normalisations and review flags (published rows)", "",
                  "| flag | rows | share of published |", "|---|---|---|"]
        published = max(manifest.counts.get("output_rows", 0), 1)
        lines += [f"| {name} | {count} | {count / published:.1%} |" for name, count in sorted(flags.items())]
    markers_in, markers_out = manifest.profile.get("markers_in", {}), manifest.profile.get("markers_out", {})
    if markers_in:
        rows_in, rows_out = max(manifest.counts.get("input_rows", 0), 1), max(manifest.counts.get("output_rows", 0), 1)
        lines += ["", "## Template and forum markers in counselor turns", "",
                  "| marker | rows in | share in | published rows | share published |", "|---|---|---|---|---|"]
        for name in sorted(markers_in):
            before, after = markers_in[name], markers_out.get(name, 0)
            lines.append(f"| {name} | {before} | {before / rows_in:.1%} | {after} | {after / rows_out:.1%} |")
    return lines


def _usage_tables(usage: dict[str, Any]) -> list[str]:
    if not usage:
        return []
    lines = ["", "## Tokens and cost this run", "",
             "| by | name | calls | ok | 429s | errors | prompt tokens | completion tokens | cost (USD) |",
             "|---|---|---|---|---|---|---|---|---|"]
    for kind in ("keys", "models"):
        for name, stats in usage.get(kind, {}).items():
            lines.append(f"| {kind[:-1]} | {name} | {stats['requests']:.0f} | {stats['ok']:.0f} | "
                         f"{stats['rate_limited']:.0f} | {stats['errors']:.0f} | {stats['prompt_tokens']:.0f} | "
                         f"{stats['completion_tokens']:.0f} | {stats['cost_usd']:.4f} |")
    budget = usage.get("budget_usd")
    lines += ["", f"Spent ${usage.get('cost_usd', 0.0):.4f}" + (f" of a ${budget:.2f} budget." if budget else ".")]
    return lines


def _topic_rows(manifest: Manifest) -> list[tuple[str, str, int, int]]:
    before = manifest.profile.get("topics_in", {})
    names = sorted(set(before) | set(manifest.topics), key=lambda t: (-before.get(t, manifest.topics.get(t, 0)), t))
    return [(f"T{number}", name, before.get(name, 0), manifest.topics.get(name, 0))
            for number, name in enumerate(names, start=1)]


# -- charts ---------------------------------------------------------------------------------------------


def _figure(width: float = 7.0, height: float = 3.6):
    import matplotlib

    matplotlib.use("Agg")  # no display on servers; set before pyplot is imported
    import matplotlib.pyplot as plt

    return plt, *plt.subplots(figsize=(width, height), dpi=100)


def _png(plt, figure) -> bytes:
    buffer = io.BytesIO()
    figure.tight_layout()
    figure.savefig(buffer, format="png")
    plt.close(figure)
    return buffer.getvalue()


def _flow_chart(manifest: Manifest) -> bytes | None:
    flow = stage_flow(manifest)
    plt, figure, axes = _figure()
    axes.bar([stage for stage, _ in flow], [rows for _, rows in flow], color="#4c72b0")
    axes.set_ylabel("rows")
    axes.set_title("rows remaining after each stage")
    axes.tick_params(axis="x", rotation=30)
    return _png(plt, figure)


def _rejects_chart(manifest: Manifest) -> bytes | None:
    reasons = [(f"{stage}/{reason}", count) for stage, found in manifest.counts.get("by_stage", {}).items()
               for reason, count in found.items()]
    if not reasons:
        return None
    reasons.sort(key=lambda item: item[1])
    plt, figure, axes = _figure(height=max(2.0, 0.35 * len(reasons) + 1))
    axes.barh([name for name, _ in reasons], [count for _, count in reasons], color="#c44e52")
    axes.set_xlabel("rows")
    axes.set_title("drop reasons")
    return _png(plt, figure)


def _topics_chart(manifest: Manifest) -> bytes | None:
    rows = _topic_rows(manifest)[:TOP_TOPICS]
    if not rows:
        return None
    labels = [label for label, *_ in rows]
    positions = range(len(rows))
    plt, figure, axes = _figure()
    axes.bar([p - 0.2 for p in positions], [before for *_, before, _ in rows], width=0.4, label="rows in")
    axes.bar([p + 0.2 for p in positions], [after for *_, after in rows], width=0.4, label="published")
    axes.set_xticks(list(positions), labels, rotation=30)
    axes.set_title(f"topics before and after (top {len(rows)})")
    axes.legend()
    return _png(plt, figure)


def _utterances_chart(manifest: Manifest) -> bytes | None:
    utterances = manifest.profile.get("utterances", {})
    if not utterances:
        return None
    pairs = sorted((int(n), c) for n, c in utterances.items())
    plt, figure, axes = _figure()
    axes.bar([n for n, _ in pairs], [c for _, c in pairs], color="#55a868")
    axes.set_xlabel("utterances (user and counselor together)")
    axes.set_ylabel("dialogues")
    axes.set_title("utterances per published dialogue")
    return _png(plt, figure)


def _usage_chart(manifest: Manifest) -> bytes | None:
    usage = manifest.usage
    groups = [(kind, usage.get(kind, {})) for kind in ("models", "keys", "kinds") if usage.get(kind)]
    if not groups:
        return None
    plt, figure, axes_grid = _figure(width=9.0, height=3.2 * len(groups))
    figure.clear()
    for row, (kind, stats) in enumerate(groups):
        names = list(stats)
        tokens = figure.add_subplot(len(groups), 2, 2 * row + 1)
        tokens.bar(names, [stats[n]["prompt_tokens"] for n in names], label="prompt")
        tokens.bar(names, [stats[n]["completion_tokens"] for n in names],
                   bottom=[stats[n]["prompt_tokens"] for n in names], label="completion")
        tokens.set_title(f"tokens per {kind[:-1]}")
        tokens.legend()
        cost = figure.add_subplot(len(groups), 2, 2 * row + 2)
        cost.bar(names, [stats[n]["cost_usd"] for n in names], color="#8172b2")
        cost.set_title(f"cost (USD) per {kind[:-1]}")
    return _png(plt, figure)

