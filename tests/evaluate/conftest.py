"""Evaluation fixtures: the bundled SMILECHAT sample's real dialogues, published as a version."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from soulray.schema import WORKING_DIALOGUE, dialogue_id, record_id
from soulray.store import ShardTarget, VersionStore, build_manifest
from soulray.store.shards import write_batch

DEMO = Path(__file__).parent.parent.parent / "soulray" / "data" / "demo"


def demo_dialogues() -> pa.Table:
    """The 300 real SMILECHAT dialogues (ChatGPT rewrites of PsyQA answers) as published dialogue rows,
    with their PsyQA question ids: several dialogues share a question, as in the full corpus."""
    pairs = pq.read_table(DEMO / "qa.parquet").to_pylist()
    dialogs = pq.read_table(DEMO / "dialogs.parquet").to_pylist()
    rows = []
    for index, (pair, dialog) in enumerate(zip(pairs, dialogs, strict=True)):
        assert pair["answer_id"] == dialog["id"]
        record = record_id(pair["question"], "", pair["answer"])
        rows.append({"id": dialogue_id(record), "record_id": record, "question_id": pair["question_id"], "topic": "",
                     "messages": dialog["messages"], "prompt_version": "smilechat", "model": "gpt-3.5-turbo",
                     "api_key_name": None, "attempts": 1, "prompt_tokens": 0, "completion_tokens": 0, "cost_usd": 0.0,
                     "source_file": "demo/dialogs.parquet", "source_row": index, "reject_stage": None,
                     "reject_reason": None, "reject_detail": None})
    return pa.Table.from_pylist(rows, schema=WORKING_DIALOGUE)


def publish(root: Path | str, dataset: str, table: pa.Table, version: str = "v1") -> str:
    """Publish `table` (WORKING_DIALOGUE rows) as a version through the real store; returns its id."""
    from soulray.schema import DIALOGUE

    store = VersionStore(str(root), dataset)
    target = ShardTarget(version_uri=store.version_uri(version), run_id=version, data_schema=DIALOGUE)
    facts = write_batch(table, target).to_pylist()
    store.commit(build_manifest(store=store, version=version, run_id=version, parent_version=None, job="test",
                                config={}, config_hash="-", inputs=[], input_rows=table.num_rows,
                                data_schema=DIALOGUE, shard_facts=facts))
    return version


@pytest.fixture(scope="session")
def dialogues() -> pa.Table:
    return demo_dialogues()
