"""Publish an existing dialogue corpus (e.g. the SMILECHAT sample) as a version, to fine-tune on it
without running the rewrite: tests, benchmarks, and users who bring an already-rewritten corpus."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from soulray.fs import S3Config
from soulray.pipeline import JobSettings, Pipeline, TableSource, run
from soulray.schema import DIALOGUE, dialogue_record_id, first_user_turn, question_group
from soulray.store.settings import StorageConfig


def smilechat_dialogues(folder: str | Path, *, limit: int | None = None) -> pa.Table:
    """DIALOGUE rows from the SMILECHAT sample layout (dialogs.parquet + qa.parquet, joined on the
    dialogue id = answer_id): the dialogue's own id, and the question_id of its pair (else the group of
    its opening question) so splits stay by question."""
    folder = Path(folder)
    dialogs = pq.read_table(folder / "dialogs.parquet")
    if limit is not None:
        dialogs = dialogs.slice(0, limit)
    qa = pq.read_table(folder / "qa.parquet", columns=["question_id", "answer_id", "question", "answer"]).to_pylist()
    by_answer = {row["answer_id"]: row for row in qa}
    rows = []
    for index, (source_id, messages) in enumerate(zip(dialogs["id"].to_pylist(), dialogs["messages"].to_pylist(),
                                                      strict=True)):
        pair = by_answer.get(source_id, {})
        question_id = pair.get("question_id") or question_group(first_user_turn(messages))
        rows.append({"id": source_id, "record_id": dialogue_record_id(messages), "question_id": question_id,
                     "topic": "", "messages": messages, "source_file": str(folder / "dialogs.parquet"),
                     "source_row": index})
    return pa.Table.from_pylist(rows, schema=DIALOGUE)


def publish_dialogues(table: pa.Table, *, root: str, dataset: str, s3: S3Config = S3Config(),
                      job: str = "import-dialogues") -> str:
    """Commit `table` (schema.DIALOGUE) as a new version of `dataset` under `root`, through the one
    publish path (no stages); returns the version."""
    pipeline = Pipeline(job=job, source=TableSource(table.cast(DIALOGUE)), stages=[], data_schema=DIALOGUE)
    result = run(pipeline, settings=JobSettings(dataset=dataset, storage=StorageConfig(root=root), s3=s3,
                                           version_prefix="import"))
    return result.manifest.version
