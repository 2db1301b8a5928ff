"""The regenerate job: Q&A sources → rewrite units → dialogues → a published version.

The stages, in order (`pipeline` below; soulray/pipeline.py runs them): the source filter chain (forum
words, PII, length, crisis screen), source dedup (each distinct answer is paid for once), the rewrite
(LLM, quotas, cache, parse), the dialogue filter chain (format, ethics, PII, AI templates, quality) and
dialogue dedup. Reading (`QASource`) normalises: maps columns, validates text. Each stage marks the rows
it drops instead of removing them, so the writer accounts for every row. With `quality_gate.enabled`, the
quality gate (soulray/gate/: an LLM judge, one revision) comes last, after dialogue dedup, so only
distinct dialogues are paid for.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from functools import partial
from typing import TYPE_CHECKING

from soulray.config import RegenerateConfig
from soulray.fs import S3Config
from soulray.gate.settings import QualityGateSettings
from soulray.gate.stage import QualityGateStage
from soulray.pipeline import Context, JobSettings, Lineage, Pipeline, RunResult, start
from soulray.pipeline import run as run_pipeline
from soulray.rewrite.settings import RewriteConfig
from soulray.rewrite.stage import estimate_batch
from soulray.schema import (
    DEDUP_DIALOGUE,
    DEDUP_SOURCE,
    DIALOGUE,
    FILTER_DIALOGUE,
    FILTER_SOURCE,
    REWRITE,
    UNIT,
)
from soulray.sources.reader import normalise_fragments, plan_fragments, read_fragments
from soulray.sources.settings import SourceSpec
from soulray.stages import DedupStage, FilterStage, RewriteStage
from soulray.store import InputFile

if TYPE_CHECKING:
    import ray.data

log = logging.getLogger(__name__)


def pipeline(config: RegenerateConfig) -> Pipeline:
    """The regenerate job's stages, each given only its own settings."""
    rewriting = config.rewrite.enabled
    # small blocks, so the rewrite spreads over every actor (QASource)
    block_rows = config.rewrite.batch_size * 4 if rewriting else None
    stages = [FilterStage(config.filters.source, name=FILTER_SOURCE, kind="unit"),
              DedupStage(config.dedup.source, name=DEDUP_SOURCE, block_rows=block_rows)]
    if rewriting:
        stages += [RewriteStage(config.rewrite),
                   FilterStage(config.filters.dialogue, name=FILTER_DIALOGUE, kind="dialogue"),
                   # dedup hands on blocks of ~8 MB (thousands of dialogues); the gate's actors need small ones
                   DedupStage(config.dedup.dialogue, name=DEDUP_DIALOGUE, against=config.dedup.against,
                              block_rows=block_rows if config.quality_gate.enabled else None),
                   QualityGateStage(config.quality_gate, filters=config.filters.dialogue)]
    source = QASource(config.sources, block_rows=block_rows, s3=config.s3)
    return Pipeline(job="regenerate", source=source, stages=stages, data_schema=DIALOGUE if rewriting else UNIT)


@dataclass(frozen=True)
class DryRun:
    estimate: dict[str, dict[str, float]]  # per model: rows, prompt_tokens, completion_tokens, cost_usd
    input_rows: int


def run(config: RegenerateConfig) -> RunResult | DryRun:
    if config.rewrite.enabled and config.rewrite.dry_run:
        return dry_run(config)
    return run_pipeline(pipeline(config), settings=JobSettings.of(config))


def dry_run(config: RegenerateConfig) -> DryRun:
    """Everything before the rewrite, then the tokens and cost of the rewrite (and of the persona's and
    the quality gate's calls) estimated, nothing called."""
    gate = config.quality_gate if config.quality_gate.enabled else None
    with start(pipeline(config), settings=JobSettings.of(config), stop_before=REWRITE) as running:
        return DryRun(estimate=estimate(running.dataset, config.rewrite, gate=gate),
                      input_rows=running.context.input_rows)


@dataclass
class QASource:
    """Parquet Q&A tables (soulray/sources/reader.py): planned on the driver, one row group per task,
    cut into blocks of `block_rows` (default 50,000)."""

    specs: list[SourceSpec]
    block_rows: int | None
    s3: S3Config
    plans: list = field(default_factory=list)

    def plan(self, s3: S3Config) -> Lineage:
        self.plans = [plan_fragments(spec, source_index=index, s3=s3) for index, spec in enumerate(self.specs)]
        return Lineage(inputs=[InputFile(**item) for plan in self.plans for item in plan.inputs],
                       rows=sum(plan.rows for plan in self.plans))

    def read(self, context: Context) -> ray.data.Dataset:
        import ray.data

        # Blocks of a few rewrite batches each, so a large row group still spreads over every rewrite actor:
        # a task's output tables are merged up to target_max_block_size, so that is capped as well (it is
        # copied into each Dataset when the Dataset is created, hence set here, before it is read).
        if self.block_rows:
            ray.data.DataContext.get_current().target_max_block_size = 1024 * 1024
        return read_fragments([fragment for plan in self.plans for fragment in plan.fragments],
                              convert=partial(normalise_fragments, self.specs, self.s3),
                              block_rows=self.block_rows or 50_000, wrap=context.clock.wrap)


def estimate(dataset: ray.data.Dataset, config: RewriteConfig, *,
             gate: QualityGateSettings | None = None) -> dict[str, dict[str, float]]:
    """Tokens and cost the rewrite (and the persona and quality-gate calls) would take, per model, from
    the real prompts of every row."""
    totals: dict[str, dict[str, float]] = {}
    for row in dataset.map_batches(estimate_batch, fn_kwargs={"config": config, "gate": gate},
                                   batch_format="pyarrow").take_all():
        model = totals.setdefault(row["model"], {"rows": 0, "prompt_tokens": 0, "completion_tokens": 0, "cost_usd": 0.0,
                                                 "batch_cost_usd": 0.0})
        for name in model:
            model[name] += row[name]
    return totals


def summary(result: RunResult | DryRun) -> str:
    """What a person wants to see at the end of a run."""
    from soulray.report import text

    if isinstance(result, RunResult):
        return text(result.manifest, version_uri=result.version_uri)
    lines = [f"dry run: {result.input_rows} input rows; nothing was called or published"]
    for model, totals in result.estimate.items():
        lines.append(f"  {model}: {totals['rows']:.0f} rows, ~{totals['prompt_tokens']:.0f} prompt + "
                     f"~{totals['completion_tokens']:.0f} completion tokens, ~${totals['cost_usd']:.2f}")
    lines.append(f"  total ~${sum(t['cost_usd'] for t in result.estimate.values()):.2f} online, "
                 f"~${sum(t['batch_cost_usd'] for t in result.estimate.values()):.2f} with rewrite.mode batch "
                 "(estimates; re-asks of malformed completions come on top)")
    return "\n".join(lines)
