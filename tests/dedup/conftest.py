"""Small real fixtures for dedup: SMILECHAT rows (CC0) as WORKING_UNIT and WORKING_DIALOGUE tables."""

from __future__ import annotations

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from soulray.schema import WORKING_DIALOGUE, WORKING_UNIT, record_id
from tests.conftest import SMILECHAT_SAMPLE


def units_table(rows: list[dict]) -> pa.Table:
    """WORKING_UNIT rows from dicts with question/answer (and optionally other fields)."""
    out = []
    for index, row in enumerate(rows):
        question, description, answer = row.get("question", ""), row.get("description", ""), row.get("answer", "")
        out.append({"record_id": row.get("record_id") or record_id(question, description, answer),
                    "question_id": row.get("question_id", f"q{index}"), "answer_id": f"a{index}", "topic": "",
                    "question": question, "description": description, "answer": answer,
                    "source_file": row.get("source_file", "fixture.parquet"), "source_row": index,
                    "reject_stage": row.get("reject_stage"), "reject_reason": row.get("reject_reason"),
                    "reject_detail": row.get("reject_detail")})
    return pa.Table.from_pylist(out, schema=WORKING_UNIT)


def dialogues_table(rows: list[dict]) -> pa.Table:
    out = []
    for index, row in enumerate(rows):
        rid = record_id(row["id"], "", str(index))
        out.append({"id": row["id"], "record_id": rid, "question_id": row["id"], "topic": "",
                    "messages": row["messages"], "prompt_version": "smile", "model": "gpt-3.5-turbo",
                    "api_key_name": "", "attempts": 1, "prompt_tokens": 0, "completion_tokens": 0, "cost_usd": 0.0,
                    "source_file": "dialogs.parquet", "source_row": index})
    return pa.Table.from_pylist(out, schema=WORKING_DIALOGUE)


@pytest.fixture(scope="session")
def smile_qa() -> list[dict]:
    return pq.read_table(SMILECHAT_SAMPLE / "qa.parquet").to_pylist()


@pytest.fixture(scope="session")
def smile_dialogs() -> list[dict]:
    return pq.read_table(SMILECHAT_SAMPLE / "dialogs.parquet").to_pylist()
