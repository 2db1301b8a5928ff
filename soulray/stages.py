"""The stages a pipeline lists (soulray/pipeline.py `Stage`): thin adapters from a stage's own settings
to its code in soulray/filters, soulray/dedup and soulray/rewrite."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING

from soulray.dedup.settings import DedupConfig
from soulray.filters.registry import FilterSpec
from soulray.pipeline import Context
from soulray.rewrite.settings import RewriteConfig
from soulray.schema import REWRITE
from soulray.store.manifest import DedupFacts, Manifest, StageReport, Usage

if TYPE_CHECKING:
    import ray.data

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class FilterStage:
    """The ordered filters of one config list (soulray/filters/chain.py), over whole blocks."""

    specs: list[FilterSpec]
    name: str  # FILTER_SOURCE or FILTER_DIALOGUE
    kind: str  # "unit" or "dialogue"

    def apply(self, dataset: ray.data.Dataset, context: Context) -> ray.data.Dataset:
        from soulray.filters import build_chain
        from soulray.filters.chain import filter_batch

        chain = build_chain(self.specs, stage=self.name, kind=self.kind)
        if not chain.filters:
            return dataset
        fn, kwargs = context.clock.wrap(filter_batch, stage=self.name, kwargs={"chain": chain})
        # whole blocks, no re-batching, so Ray fuses it with the stage before
        return dataset.map_batches(fn, fn_kwargs=kwargs, batch_size=None, batch_format="pyarrow")


@dataclass(frozen=True)
class DedupStage:
    """Mark exact and near duplicates (soulray/dedup). It materialises the pipeline: duplicates are a
    global property. `against`: a published version whose rows new rows must not duplicate;
    `block_rows`: cut the output into blocks this small again (so a rewrite after it spreads over
    every actor), or larger in a large run (rows_per_block)."""

    config: DedupConfig
    name: str  # DEDUP_SOURCE or DEDUP_DIALOGUE
    against: str | None = None
    block_rows: int | None = None

    def apply(self, dataset: ray.data.Dataset, context: Context) -> ray.data.Dataset:
        from soulray.dedup import dedup_dataset
        from soulray.store import open_version

        if not self.config.enabled:
            return dataset
        against = open_version(self.against, s3=context.s3) if self.against else None
        marked, report = dedup_dataset(dataset, config=self.config, stage=self.name, against=against)
        log.info("%s", report.summary())
        facts = DedupFacts(rows_marked=report.rows_marked, **{name: getattr(report, name) for name in DedupFacts.model_fields
                                                             if name != "rows_marked"})
        context.report(StageReport(name=self.name, seconds=dict(report.seconds), dedup=facts))
        if self.block_rows:  # streamed: a repartition into a number of blocks held every block's metadata on
            # the driver at once (~37 KB a block: +290 MB at 1M rows in blocks of 128, issue 22) and waited for all
            marked = marked.repartition(target_num_rows_per_block=rows_per_block(self.block_rows, report.input_rows))
        return marked


# Blocks after dedup: at least this many in a run (so every actor of the next stage has work to the end),
# and no more than `block_rows` x MAX_BLOCK_GROWTH rows each. Every block is a Ray task of the next stage, and
# each task costs the driver ~10-30 KB and the GCS and stats actor their events (issue 22): 8,100 rewrite
# tasks of 123 rows at 1M rows, ~1,000 of 1,024 rows with these.
MIN_BLOCKS, MAX_BLOCK_GROWTH = 256, 8


def rows_per_block(block_rows: int, rows: int) -> int:
    """`block_rows` for a small run; larger blocks (fewer tasks) for a large one."""
    return max(block_rows, min(rows // MIN_BLOCKS, block_rows * MAX_BLOCK_GROWTH))


class RewriteStage:
    """The LLM rewrite (soulray/rewrite): a session (quota broker, cache, optional local server) open
    until the write ends, an actor pool of rewriters; after the write, the run's usage, and a check
    that refuses to publish an outage."""

    name = REWRITE

    def __init__(self, config: RewriteConfig) -> None:
        self.config = config

    def apply(self, dataset: ray.data.Dataset, context: Context) -> ray.data.Dataset:
        from soulray.rewrite.stage import RewriteSession

        session = context.cleanup.enter_context(
            RewriteSession(self.config, run_id=context.run_id, store=context.store, s3=context.s3))
        context.usage = lambda: Usage.model_validate(session.usage())
        context.llm = session
        return session.apply(dataset, expected_rows=context.input_rows, clock=context.clock)

    def check(self, manifest: Manifest) -> None:
        from soulray.rewrite.stage import check_failures

        check_failures(manifest.counts, max_share=self.config.max_failure_share,
                       paid_calls=manifest.usage.paid_calls if manifest.usage else 0)
