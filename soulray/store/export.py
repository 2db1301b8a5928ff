"""Export a version as JSONL in the SoulChatCorpus layout: {"id", "topic", "messages": [{role, content}]}.

`id` is the input's id as the version holds it (text, see schema.DIALOGUE); `record_id` (content hash)
and `question_id` (the question group the fine-tuning split goes by) ride along.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from soulray.schema import ROLE_ASSISTANT, ROLE_USER
from soulray.store.reader import Version


def export_jsonl(version: Version, output: str | Path) -> int:
    """Stream the version's data to `output`, one JSON object a line; returns rows written."""
    Path(output).parent.mkdir(parents=True, exist_ok=True)
    rows = 0
    with open(output, "w", encoding="utf-8") as out:
        for batch in version.to_arrow_dataset("data").to_batches():
            for row in batch.to_pylist():
                out.write(json.dumps(as_corpus_row(row), ensure_ascii=False) + "\n")
                rows += 1
    return rows


def as_corpus_row(row: dict[str, Any]) -> dict[str, Any]:
    """A dialogue row as it is; a rewrite unit (no rewrite yet) as its single exchange."""
    messages = row.get("messages")
    if messages is None:
        question = "\n".join(part for part in (row["question"], row.get("description") or "") if part)
        messages = [{"role": ROLE_USER, "content": question}, {"role": ROLE_ASSISTANT, "content": row["answer"]}]
    return {"id": row["id"] if "id" in row else row["answer_id"], "record_id": row["record_id"],
            "question_id": row.get("question_id"), "topic": row.get("topic") or "", "messages": messages}
