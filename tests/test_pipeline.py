"""soulray/pipeline.py: a source and a list of stages run to a committed version, with every stage's
report and busy time, through the one publish path."""

from __future__ import annotations

from dataclasses import dataclass

import pyarrow as pa
import pyarrow.compute as pc
import pytest

from soulray.config import StorageConfig
from soulray.pipeline import Context, JobSettings, Pipeline, TableSource, run
from soulray.schema import UNIT, dialogue_record_id
from soulray.store import open_version
from soulray.train.corpus import publish_dialogues, smilechat_dialogues
from tests.accounting import assert_accounted
from tests.conftest import SMILECHAT_SAMPLE
from tests.store.test_store import working_rows


def mark_every_third(table: pa.Table, *, reason: str) -> pa.Table:
    marked = pc.equal(pc.remainder(table["source_row"], 3), 0)
    for name, value in (("reject_stage", "filter_source"), ("reject_reason", reason), ("reject_detail", "a test")):
        column = pc.if_else(marked, pa.scalar(value), table[name])
        table = table.set_column(table.schema.get_field_index(name), name, column)
    return table


@dataclass(frozen=True)
class MarkEveryThird:
    name: str = "filter_source"

    def apply(self, dataset, context: Context):
        fn, kwargs = context.clock.wrap(mark_every_third, stage=self.name, kwargs={"reason": "third"})
        return dataset.map_batches(fn, fn_kwargs=kwargs, batch_size=None, batch_format="pyarrow")


def test_run_publishes_with_a_report_and_busy_time_per_stage_and_changes(ray_local, tmp_path):
    pipeline = Pipeline(job="test", source=TableSource(working_rows(30), block_rows=7), stages=[MarkEveryThird()],
                        data_schema=UNIT)
    job = JobSettings(dataset="d", storage=StorageConfig(root=str(tmp_path)))
    first = run(pipeline, settings=job)
    counts = first.manifest.counts
    assert (counts.input_rows, counts.output_rows, counts.by_stage) == (30, 20, {"filter_source": {"third": 10}})
    report = first.manifest.stages["filter_source"]
    assert report.seconds["busy"] > 0 and report.batches == 5  # one figure per block of 7 rows
    assert first.manifest.changes is None and any(f.path.endswith("report.md") for f in first.manifest.report)
    assert_accounted(open_version(first.version_uri))

    second = run(pipeline, settings=job)
    assert second.manifest.parent_version == first.manifest.version
    assert (second.manifest.changes.added, second.manifest.changes.kept) == (0, 30)


def test_an_imported_corpus_is_published_through_the_same_path(ray_local, tmp_path, smilechat_sample_dialogues):
    """publish_dialogues used to commit without changes or a report; now it is a pipeline without stages."""
    first = publish_dialogues(smilechat_sample_dialogues, root=str(tmp_path), dataset="smile")
    second = publish_dialogues(smilechat_sample_dialogues, root=str(tmp_path), dataset="smile")
    version = open_version(second, root=str(tmp_path), dataset="smile", verify=True)
    assert first.startswith("import-") and version.manifest.parent_version == first
    assert version.manifest.changes.kept == len(set(smilechat_sample_dialogues["record_id"].to_pylist()))
    assert any(shard.path.endswith("report.md") for shard in version.manifest.report)
    assert version.to_table()["record_id"].to_pylist() == [dialogue_record_id(messages) for messages in
                                                          smilechat_sample_dialogues["messages"].to_pylist()]


@pytest.fixture
def smilechat_sample_dialogues() -> pa.Table:
    return smilechat_dialogues(SMILECHAT_SAMPLE, limit=20)


def test_blocks_after_dedup_grow_with_the_run_so_its_tasks_do_not():
    from soulray.stages import MAX_BLOCK_GROWTH, MIN_BLOCKS, rows_per_block

    assert rows_per_block(128, 300) == 128  # a small run keeps small blocks: every actor gets some
    assert rows_per_block(128, 100_000) == 100_000 // MIN_BLOCKS  # still MIN_BLOCKS blocks
    assert rows_per_block(128, 1_000_000) == 128 * MAX_BLOCK_GROWTH  # ~1,000 tasks, not 8,000
    assert rows_per_block(128, 10_000_000) == 128 * MAX_BLOCK_GROWTH  # a task's rows stay bounded
