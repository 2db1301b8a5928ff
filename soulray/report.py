"""The run report: what a person looks at after a run. A Markdown page plus PNG charts, rendered from
the manifest alone (counts, profile, usage, changes), so it costs no extra pass over the data and can
be re-rendered for any published version (`soulray report <version>`).

Charts: rows through each stage, drop reasons, topics before and after, utterances per dialogue, tokens
and cost per model, per key and per kind of call, and the quality gate's scores before and after it. Topic names are Chinese and servers rarely have a CJK font, so the
charts label topics T1…Tn and the Markdown table gives their names.
"""

from __future__ import annotations

import io

from soulray.schema import STAGE_ORDER
from soulray.store.manifest import GateFacts, Manifest, StageReport, Usage

TOP_TOPICS = 12


def text(manifest: Manifest, *, version_uri: str | None = None) -> str:
    """A version in a few lines: the end of a run (`summary`), `soulray inspect`, and the top of the run
    report all print this."""
    counts = manifest.counts
    lines = [f"published {manifest.dataset} version {manifest.version}  (job {manifest.job}, run "
             f"{manifest.run_id}, {manifest.created_at})",
             f"  lineage parent {manifest.parent_version}, {manifest.code_version}, config {manifest.config_hash[:12]}"]
    lines += [f"  at      {version_uri}"] if version_uri else []
    lines.append(f"  rows    {counts.input_rows} in = {counts.output_rows} out + {counts.rejected_rows} rejected")
    for stage, reasons in counts.by_stage.items():
        lines += [f"  reject  {stage}/{reason}: {count}" for reason, count in reasons.items()]
    top = ", ".join(f"{topic or '(none)'} {count}" for topic, count in list(manifest.topics.items())[:6])
    lines.append(f"  topics  {top}")
    lines += _usage_lines(manifest.usage) if manifest.usage else []
    lines += [line for report in manifest.stages.values() for line in _stage_lines(report, manifest)]
    if manifest.changes:
        changes = manifest.changes
        lines.append(f"  changes {changes.added} added, {changes.removed} removed, {changes.kept} kept "
                     f"since {changes.parent}")
    for report in (shard for shard in manifest.report if shard.path.endswith("/report.md")):
        lines.append(f"  report  {version_uri + '/' if version_uri else ''}{report.path}")
    lines.append(f"  shards  {len(manifest.data)} data ({sum(s.bytes for s in manifest.data)} bytes), "
                 f"{len(manifest.rejects)} rejects; " + ", ".join(f"{phase.removesuffix('_s')} {seconds:.1f}s"
                                                                  for phase, seconds in manifest.timings_s.items()))
    lines += [f"  input   {item.uri} ({item.rows} rows, {item.bytes} bytes)" for item in manifest.inputs]
    return "\n".join(lines)


def _usage_lines(usage: Usage) -> list[str]:
    lines = []
    for kind, named in (("key", usage.keys), ("model", usage.models)):
        for name, stats in named.items():
            lines.append(f"  {kind:<7} {name}: {stats.requests:.0f} calls ({stats.ok:.0f} ok, {stats.rate_limited:.0f} "
                         f"rate-limited, {stats.errors:.0f} errors), {stats.prompt_tokens:.0f}+"
                         f"{stats.completion_tokens:.0f} tokens, ${stats.cost_usd:.4f}")
    lines += [f"  calls   {kind}: {stats.paid:.0f} paid + {stats.cached:.0f} cached, "
              f"{stats.prompt_tokens:.0f}+{stats.completion_tokens:.0f} tokens, ${stats.cost_usd:.4f}"
              for kind, stats in usage.kinds.items()]
    if usage.batches is not None:
        batches = usage.batches
        lines.append(f"  batches {batches.entries} ({batches.done} collected; "
                     + ", ".join(f"{status} {n}" for status, n in batches.statuses.items())
                     + f"), {batches.requeued} requests sent again, {batches.failed_lines} failed lines"
                     + (f", {batches.wall_s:.1f}s" if batches.wall_s is not None else ""))
    budget = f" of a ${usage.budget_usd:.2f} budget" if usage.budget_usd else ""
    return lines + [f"  spend   ${usage.cost_usd:.4f} this run{budget}; tokens {usage.tokens}"]


def _stage_lines(report: StageReport, manifest: Manifest) -> list[str]:
    phases = ", ".join(f"{phase} {seconds:.1f}s" for phase, seconds in report.seconds.items())
    if report.gate is not None:
        return _gate_lines(report.gate, manifest, phases)
    if report.dedup is None:
        return [f"  stage   {report.name}: {phases} ({report.batches} batches)"]
    facts = report.dedup
    marked = ", ".join(f"{reason} {count}" for reason, count in facts.marked.items()) or "none"
    return [f"  dedup   {report.name}: {facts.clusters} clusters, {facts.rows_marked} rows marked ({marked}); "
            f"{phases}"]


GATE_KINDS = ("judge", "revision")  # the quality gate's calls (soulray/gate/stage.py)


def _gate_lines(gate: GateFacts, manifest: Manifest, phases: str) -> list[str]:
    """What the gate let through and what it cost per published dialogue."""
    lines = [f"  gate    {gate.rubric_version} ≥{gate.threshold}: {gate.judged} judged, {gate.passed} passed, "
             f"{gate.revised_passed} passed after revision, {sum(gate.rejected.values())} rejected "
             f"({gate.pass_rate:.1%} pass); {phases}"]
    kinds = manifest.usage.kinds if manifest.usage else {}
    published = manifest.counts.output_rows
    if published:
        spent = sum(kinds[kind].cost_usd for kind in GATE_KINDS if kind in kinds)
        calls = sum(kinds[kind].calls for kind in GATE_KINDS if kind in kinds)
        lines.append(f"  gate    per published dialogue: {calls / published:.2f} calls, ${spent / published:.5f}")
    return lines


def render(manifest: Manifest) -> dict[str, bytes]:
    """The report's files, by path relative to the version's `report/` folder."""
    charts = {
        "flow.png": _flow_chart(manifest),
        "rejects.png": _rejects_chart(manifest),
        "topics.png": _topics_chart(manifest),
        "utterances.png": _utterances_chart(manifest),
        "usage.png": _usage_chart(manifest),
        "gate.png": _gate_chart(manifest),
    }
    charts = {name: png for name, png in charts.items() if png is not None}
    return {"report.md": markdown(manifest, charts=list(charts)).encode("utf-8"), **charts}


def stage_flow(manifest: Manifest) -> list[tuple[str, int]]:
    """Rows still in the pipeline after each stage that dropped some, in pipeline order."""
    by_stage = manifest.counts.by_stage
    stages = [s for s in STAGE_ORDER if s in by_stage] + sorted(set(by_stage) - set(STAGE_ORDER))
    remaining, flow = manifest.counts.input_rows, [("input", manifest.counts.input_rows)]
    for stage in stages:
        remaining -= sum(by_stage[stage].values())
        flow.append((stage, remaining))
    return flow


def markdown(manifest: Manifest, *, charts: list[str]) -> str:
    lines = [f"# {manifest.dataset} {manifest.version}", "", "```", text(manifest), "```", "",
             "Rows are identified by content: a changed row counts as one removed and one added. A stage's "
             "`busy` time is the time inside its batch function summed over every task and actor (stages "
             "stream at once, so they have no wall time of their own).", ""]
    lines += ["## Rows through each stage", "", "| after | rows |", "|---|---|"]
    lines += [f"| {stage} | {rows} |" for stage, rows in stage_flow(manifest)]
    lines += ["", "| stage | reason | rows |", "|---|---|---|"]
    for stage, reasons in manifest.counts.by_stage.items():
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
    lines += _gate_tables(manifest)
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
        published = max(manifest.counts.output_rows, 1)
        lines += [f"| {name} | {count} | {count / published:.1%} |" for name, count in sorted(flags.items())]
    markers_in, markers_out = manifest.profile.get("markers_in", {}), manifest.profile.get("markers_out", {})
    if markers_in:
        rows_in, rows_out = max(manifest.counts.input_rows, 1), max(manifest.counts.output_rows, 1)
        lines += ["", "## Template and forum markers in counselor turns", "",
                  "| marker | rows in | share in | published rows | share published |", "|---|---|---|---|---|"]
        for name in sorted(markers_in):
            before, after = markers_in[name], markers_out.get(name, 0)
            lines.append(f"| {name} | {before} | {before / rows_in:.1%} | {after} | {after / rows_out:.1%} |")
    return lines


def _usage_tables(usage: Usage | None) -> list[str]:
    if usage is None:
        return []
    lines = ["", "## Tokens and cost this run", "",
             "| by | name | calls | ok | 429s | errors | prompt tokens | completion tokens | cost (USD) |",
             "|---|---|---|---|---|---|---|---|---|"]
    for kind, named in (("key", usage.keys), ("model", usage.models)):
        for name, stats in named.items():
            lines.append(f"| {kind} | {name} | {stats.requests:.0f} | {stats.ok:.0f} | {stats.rate_limited:.0f} | "
                         f"{stats.errors:.0f} | {stats.prompt_tokens:.0f} | {stats.completion_tokens:.0f} | "
                         f"{stats.cost_usd:.4f} |")
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
    reasons = [(f"{stage}/{reason}", count) for stage, found in manifest.counts.by_stage.items()
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
    groups = ([(kind, named) for kind, named in (("models", usage.models), ("keys", usage.keys), ("kinds", usage.kinds))
               if named] if usage else [])
    if not groups:
        return None
    plt, figure, axes_grid = _figure(width=9.0, height=3.2 * len(groups))
    figure.clear()
    for row, (kind, stats) in enumerate(groups):
        names = list(stats)
        tokens = figure.add_subplot(len(groups), 2, 2 * row + 1)
        tokens.bar(names, [stats[n].prompt_tokens for n in names], label="prompt")
        tokens.bar(names, [stats[n].completion_tokens for n in names],
                   bottom=[stats[n].prompt_tokens for n in names], label="completion")
        tokens.set_title(f"tokens per {kind[:-1]}")
        tokens.legend()
        cost = figure.add_subplot(len(groups), 2, 2 * row + 2)
        cost.bar(names, [stats[n].cost_usd for n in names], color="#8172b2")
        cost.set_title(f"cost (USD) per {kind[:-1]}")
    return _png(plt, figure)


# -- the quality gate (soulray/gate/) --------------------------------------------------------------------
def _gate_facts(manifest: Manifest) -> GateFacts | None:
    return next((report.gate for report in manifest.stages.values() if report.gate is not None), None)


def _gate_tables(manifest: Manifest) -> list[str]:
    """The share of dialogues at each score, per dimension, before the gate (the first rating of every
    judged dialogue) and after it (the published ones); the calls per kind with their share of the cost."""
    gate = _gate_facts(manifest)
    if gate is None:
        return []
    rejected = ", ".join(f"{reason} {n}" for reason, n in sorted(gate.rejected.items())) or "none"
    lines = ["", f"## Quality gate ({gate.rubric_version}, threshold {gate.threshold})", "",
             f"{gate.judged} dialogues judged: {gate.passed} passed, {gate.revised_passed} passed after "
             f"their one revision, rejected: {rejected}; pass rate {gate.pass_rate:.1%}.", "",
             "| dimension | mean before | mean after | scores before | scores after |", "|---|---|---|---|---|"]
    for dimension, before in gate.before.items():
        after = gate.after.get(dimension, {})
        lines.append(f"| {dimension} | {_mean(before):.2f} | {_mean(after):.2f} | {_spread(before)} | {_spread(after)} |")
    kinds = manifest.usage.kinds if manifest.usage else {}
    if kinds:
        published = max(manifest.counts.output_rows, 1)
        total = sum(stats.cost_usd for stats in kinds.values()) or 1.0
        lines += ["", "| calls | paid | cached | prompt tokens | completion tokens | cost (USD) | share of cost | "
                      "per published dialogue |", "|---|---|---|---|---|---|---|---|"]
        lines += [f"| {kind} | {stats.paid:.0f} | {stats.cached:.0f} | {stats.prompt_tokens:.0f} | "
                  f"{stats.completion_tokens:.0f} | {stats.cost_usd:.4f} | {stats.cost_usd / total:.1%} | "
                  f"{stats.calls / published:.2f} |" for kind, stats in kinds.items()]
    return lines


def _mean(histogram: dict[str, int]) -> float:
    total = sum(histogram.values())
    return sum(int(score) * n for score, n in histogram.items()) / total if total else float("nan")


def _spread(histogram: dict[str, int]) -> str:
    total = sum(histogram.values()) or 1
    return " ".join(f"{score}: {n / total:.0%}" for score, n in sorted(histogram.items(), key=lambda i: int(i[0])))


def _gate_chart(manifest: Manifest) -> bytes | None:
    """Per dimension, the share of dialogues at each score before and after the gate; and the totals."""
    gate = _gate_facts(manifest)
    if gate is None or not gate.before:
        return None
    dimensions = [name for name in gate.before if name != "total"] + ["total"]
    plt, figure, _ = _figure(width=3.0 * len(dimensions), height=3.2)
    figure.clear()
    for index, dimension in enumerate(dimensions):
        axes = figure.add_subplot(1, len(dimensions), index + 1)
        for offset, when, colour in ((-0.2, gate.before, "#c44e52"), (0.2, gate.after, "#55a868")):
            histogram = when.get(dimension, {})
            total = sum(histogram.values()) or 1
            scores = sorted(int(score) for score in histogram)
            axes.bar([score + offset for score in scores], [histogram[str(score)] / total for score in scores],
                     width=0.4, color=colour, label="before" if when is gate.before else "after")
        axes.set_xticks(sorted({int(score) for when in (gate.before, gate.after) for score in when.get(dimension, {})}))
        axes.set_title(dimension)
        axes.set_xlabel("score")
    figure.axes[0].set_ylabel("share of dialogues")
    figure.axes[0].legend()
    return _png(plt, figure)
