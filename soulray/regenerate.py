"""The regenerate job, top to bottom: sources → rewrite units → dialogues → a published version.

Stages today: normalise (read + map columns + validate text), the source filter chain (forum words,
PII, length, crisis screen), rewrite (LLM, quotas, cache, parse) and the dialogue filter chain (format,
ethics, PII, AI templates, quality), with MinHash dedup after each chain (sources: each distinct answer
is paid for once; dialogues). Each stage marks the rows it drops instead of removing them, so the
writer accounts for every row.
"""

from __future__ import annotations

import dataclasses
import logging
import time
import uuid
from contextlib import ExitStack
from dataclasses import dataclass
from typing import Any

from soulray.config import (
    DedupConfig,
    RegenerateConfig,
    RewriteConfig,
    check_named_secrets,
    config_hash,
    secret_env_names,
)
from soulray.dedup import dedup_dataset
from soulray.filters import DIALOGUE_STAGE, SOURCE_STAGE, apply_chain, build_chain
from soulray.redaction import redact_tree
from soulray.rewrite.session import RewriteSession
from soulray.rewrite.stage import check_failures, estimate_batch
from soulray.runtime import init_ray, refuse_secrets_in_runtime_env
from soulray.schema import DIALOGUE, UNIT
from soulray.sources import SourcePlan, normalise_fragment, plan_fragments
from soulray.store import (
    InputFile,
    Manifest,
    ShardTarget,
    Version,
    VersionStore,
    build_manifest,
    new_version_id,
    open_version,
    publish,
    write_shards,
)

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RunResult:
    manifest: Manifest
    version_uri: str


@dataclass(frozen=True)
class DryRun:
    estimate: dict[str, dict[str, float]]  # per model: rows, prompt_tokens, completion_tokens, cost_usd
    input_rows: int


def run(config: RegenerateConfig) -> RunResult | DryRun:
    check_named_secrets(config)  # before Ray or any pipeline starts: fails in a second, naming the key
    started = time.perf_counter()
    timings: dict[str, float] = {}
    run_id = uuid.uuid4().hex[:12]
    store = VersionStore(config.storage.root, config.dataset, s3=config.s3)
    version = config.storage.version or new_version_id(run_id)
    store.require_new(version)
    log.info("run %s: publishing %s/%s", run_id, config.dataset, version)

    plans = [plan_fragments(spec, source_index=index, s3=config.s3) for index, spec in enumerate(config.sources)]
    timings["plan_s"] = time.perf_counter() - started

    init_ray(config.ray)
    refuse_secrets_in_runtime_env(secret_env_names(config))
    pipeline = _normalise(plans, config)
    input_rows = sum(plan.rows for plan in plans)
    if config.limit is not None:
        pipeline = pipeline.limit(config.limit)
        input_rows = min(input_rows, config.limit)
    pipeline = apply_chain(pipeline, build_chain(config.filters.source, stage=SOURCE_STAGE, kind="unit"))
    stages: dict[str, Any] = {}
    if config.dedup.source.enabled:  # before the rewrite: a distinct answer is paid for once
        pipeline = dedup_stage(pipeline, config.dedup.source, "dedup_source", stages, timings,
                          block_rows=config.rewrite.batch_size * 4)

    if config.rewrite.enabled and config.rewrite.dry_run:
        return DryRun(estimate=estimate(pipeline, config.rewrite), input_rows=input_rows)

    data_schema, usage = UNIT, {}
    with ExitStack() as cleanup:
        if config.rewrite.enabled:
            rewrite = cleanup.enter_context(RewriteSession(config.rewrite, run_id=run_id, store=store, s3=config.s3))
            pipeline, data_schema = rewrite.apply(pipeline, expected_rows=input_rows), DIALOGUE
            pipeline = apply_chain(pipeline, build_chain(config.filters.dialogue, stage=DIALOGUE_STAGE,
                                                         kind="dialogue"))
            if config.dedup.dialogue.enabled:
                against = open_version(config.dedup.against, s3=config.s3) if config.dedup.against else None
                pipeline = dedup_stage(pipeline, config.dedup.dialogue, "dedup_dialogue", stages, timings, against=against)
        target = ShardTarget(version_uri=store.version_uri(version), run_id=run_id, data_schema=data_schema,
                             s3=config.s3, max_shard_bytes=config.storage.max_shard_mb * 1024 * 1024)
        phase = time.perf_counter()
        shard_facts = write_shards(pipeline, target, rows_per_shard=config.storage.rows_per_shard)
        timings["pipeline_s"] = time.perf_counter() - phase
        if config.rewrite.enabled:
            usage = rewrite.usage()

    manifest = build_manifest(
        store=store, version=version, run_id=run_id, job="regenerate",
        config=redact_tree(config.model_dump(mode="json")), config_hash=config_hash(config),
        inputs=[InputFile(**item) for plan in plans for item in plan.inputs], input_rows=input_rows,
        data_schema=data_schema, shard_facts=shard_facts,
        timings_s={**timings, "total_s": time.perf_counter() - started}, usage=usage,
    )
    if config.rewrite.enabled:  # before anything of the version (its report) is written
        check_failures(manifest.counts, max_share=config.rewrite.max_failure_share,
                       paid_calls=int(sum(key.get("ok", 0) for key in usage.get("keys", {}).values())))
    manifest = publish(store, manifest.model_copy(update={"stages": stages}))
    return RunResult(manifest=manifest, version_uri=store.version_uri(version))


def dedup_stage(pipeline, config: DedupConfig, stage: str, stages: dict[str, Any], timings: dict[str, float], *,
           against: Version | None = None, block_rows: int | None = None):
    """Mark duplicates (materialises the pipeline: duplicates are a global property); its report goes
    into the manifest's `stages` and its phase times into `timings`."""
    marked, report = dedup_dataset(pipeline, config=config, stage=stage, against=against)
    log.info("%s", report.summary())
    stages[stage] = {"clusters": report.clusters, "rows_marked": report.rows_marked, "marked": report.marked,
                     "considered_rows": report.considered_rows, "bands": report.bands,
                     "rows_per_band": report.rows_per_band, "candidate_edges": report.candidate_edges,
                     "largest_component": report.largest_component}
    timings.update({f"{stage}_{phase}_s": seconds for phase, seconds in report.seconds.items()})
    if block_rows:  # small blocks again, so the rewrite spreads over every actor (see _normalise)
        marked = marked.repartition(max(1, -(-report.input_rows // block_rows)))
    return marked


def _normalise(plans: list[SourcePlan], config: RegenerateConfig):
    import ray.data

    fragments = [dataclasses.asdict(fragment) for plan in plans for fragment in plan.fragments]
    # Blocks of a few rewrite batches each, so a large row group still spreads over every rewrite actor:
    # a task's output tables are merged up to target_max_block_size, so that is capped as well (it is
    # copied into each Dataset when the Dataset is created, hence set here, before from_items).
    block_rows = config.rewrite.batch_size * 4 if config.rewrite.enabled else 50_000
    if config.rewrite.enabled:
        ray.data.DataContext.get_current().target_max_block_size = 1024 * 1024
    return ray.data.from_items(fragments, override_num_blocks=len(fragments)).map_batches(
        _normalise_batch, fn_kwargs={"config": config, "block_rows": block_rows}, batch_size=1,
        batch_format="pyarrow",
    )


def _normalise_batch(batch, *, config: RegenerateConfig, block_rows: int):
    from soulray.sources.reader import Fragment

    for item in batch.to_pylist():
        fragment = Fragment(**item)
        table = normalise_fragment(fragment, config.sources[fragment.source_index], s3=config.s3)
        for start in range(0, table.num_rows, block_rows):
            yield table.slice(start, block_rows)


def estimate(pipeline, config: RewriteConfig) -> dict[str, dict[str, float]]:
    """Tokens and cost the rewrite would take, per model, from the real prompts of every row."""
    totals: dict[str, dict[str, float]] = {}
    for row in pipeline.map_batches(estimate_batch, fn_kwargs={"config": config}, batch_format="pyarrow").take_all():
        model = totals.setdefault(row["model"], {"rows": 0, "prompt_tokens": 0, "completion_tokens": 0, "cost_usd": 0.0,
                                                 "batch_cost_usd": 0.0})
        for field in model:
            model[field] += row[field]
    return totals


def summary(result: RunResult | DryRun) -> str:
    """What a person wants to see at the end of a run."""
    if isinstance(result, DryRun):
        lines = [f"dry run: {result.input_rows} input rows; nothing was called or published"]
        for model, totals in result.estimate.items():
            lines.append(f"  {model}: {totals['rows']:.0f} rows, ~{totals['prompt_tokens']:.0f} prompt + "
                         f"~{totals['completion_tokens']:.0f} completion tokens, ~${totals['cost_usd']:.2f}")
        lines.append(f"  total ~${sum(t['cost_usd'] for t in result.estimate.values()):.2f} online, "
                     f"~${sum(t['batch_cost_usd'] for t in result.estimate.values()):.2f} with rewrite.mode batch "
                     "(estimates; re-asks of malformed completions come on top)")
        return "\n".join(lines)
    manifest, counts = result.manifest, result.manifest.counts
    lines = [
        f"published {manifest.dataset} version {manifest.version}",
        f"  at      {result.version_uri}",
        f"  rows    {counts['input_rows']} in = {counts['output_rows']} out + {counts['rejected_rows']} rejected",
    ]
    for stage, reasons in counts["by_stage"].items():
        for reason, count in reasons.items():
            lines.append(f"  reject  {stage}/{reason}: {count}")
    top = ", ".join(f"{topic or '(none)'} {count}" for topic, count in list(manifest.topics.items())[:6])
    lines.append(f"  topics  {top}")
    for key, stats in manifest.usage.get("keys", {}).items():
        lines.append(f"  key     {key}: {stats['requests']:.0f} calls ({stats['ok']:.0f} ok, {stats['rate_limited']:.0f} "
                     f"rate-limited, {stats['errors']:.0f} errors), {stats['prompt_tokens']:.0f}+"
                     f"{stats['completion_tokens']:.0f} tokens, ${stats['cost_usd']:.4f}")
    for model, stats in manifest.usage.get("models", {}).items():
        lines.append(f"  model   {model}: {stats['requests']:.0f} calls, {stats['prompt_tokens']:.0f}+"
                     f"{stats['completion_tokens']:.0f} tokens, ${stats['cost_usd']:.4f}")
    if manifest.usage:
        lines.append(f"  spend   ${manifest.cost_usd:.4f} this run; tokens {manifest.tokens}")
    for stage, facts in manifest.stages.items():
        if "clusters" in facts:
            lines.append(f"  dedup   {stage}: {facts['clusters']} clusters, {facts['rows_marked']} rows marked "
                         f"({', '.join(f'{r} {n}' for r, n in facts['marked'].items()) or 'none'}); "
                         + ", ".join(f"{k.removeprefix(stage + '_').removesuffix('_s')} {v:.1f}s" for k, v in manifest.timings_s.items()
                                     if k.startswith(stage)))
    if manifest.changes:
        changes = manifest.changes
        lines.append(f"  changes {changes['added']} added, {changes['removed']} removed, {changes['kept']} kept "
                     f"since {changes['parent']}")
    for report in (shard for shard in manifest.report if shard.path.endswith("/report.md")):
        lines.append(f"  report  {result.version_uri}/{report.path}")
    lines.append(f"  shards  {len(manifest.data)} data, {len(manifest.rejects)} rejects; "
                 f"{manifest.timings_s.get('total_s', 0):.1f}s")
    return "\n".join(lines)

