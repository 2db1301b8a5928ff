"""The accounting check itself (tests/accounting.py) catches what a run could get wrong."""

from __future__ import annotations

import pyarrow as pa
import pytest

from soulray.store import Version, VersionStore, open_version
from tests.accounting import assert_accounted
from tests.store.test_store import working_rows, write_version


def publish(tmp_path, table: pa.Table):
    store = VersionStore(str(tmp_path), "corpus")
    store.commit(write_version(store, "v1", table))
    return open_version("v1", root=str(tmp_path), dataset="corpus")


def test_a_whole_version_passes(tmp_path):
    table = working_rows(12, rejected_every=4)
    assert_accounted(publish(tmp_path, table), record_ids=set(table["record_id"].to_pylist()))


def test_a_row_both_published_and_rejected_fails(tmp_path):
    table = working_rows(12, rejected_every=4).to_pylist()
    table[1]["record_id"] = table[0]["record_id"]  # row 0 is rejected, row 1 published: one id, twice
    with pytest.raises(AssertionError, match="twice"):
        assert_accounted(publish(tmp_path, pa.Table.from_pylist(table, schema=working_rows(1).schema)))


def test_a_missing_or_foreign_row_fails(tmp_path):
    table = working_rows(12, rejected_every=4)
    with pytest.raises(AssertionError):
        assert_accounted(publish(tmp_path, table), record_ids=set(working_rows(13)["record_id"].to_pylist()))


def test_an_unknown_stage_fails(tmp_path):
    rows = working_rows(6, rejected_every=3).to_pylist()
    rows[0]["reject_stage"] = "somewhere"
    with pytest.raises(AssertionError, match="somewhere"):
        assert_accounted(publish(tmp_path, pa.Table.from_pylist(rows, schema=working_rows(1).schema)))


def test_per_stage_counts_that_disagree_with_the_reject_table_fail(tmp_path):
    version = publish(tmp_path, working_rows(12, rejected_every=4))
    counts = version.manifest.counts.model_copy(update={"by_stage": {"normalize": {"empty_answer": 2}, "rewrite": {"x": 1}}})
    with pytest.raises(AssertionError):
        assert_accounted(Version(version.store, version.manifest.model_copy(update={"counts": counts})))
