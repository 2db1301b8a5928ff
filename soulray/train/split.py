"""Train / validation split by question: every answer to one question lands on the same side.

PsyQA has several answers per question and SMILECHAT keeps them (SOULCHAT.md: 26,621 dialogues share
their opening question), so a split by dialogue would test on questions the model trained on. The side
of a question is a hash of (seed, question_id): deterministic, independent of row order and of the
other rows, so the evaluation stage can recompute it from `split.json` alone.
"""

from __future__ import annotations

import hashlib
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

SPLIT_FORMAT = "soulray-split/1"
SPLIT_RULE = ("validation when int(sha256(f'{seed}:{key}').hexdigest()[:16], 16) / 2**64 < validation_share, "
              "key = question_id (record_id when question_id is empty)")


def split_key(question_id: str | None, record_id: str | None) -> str:
    return question_id or f"record:{record_id}"


def is_validation(key: str, *, seed: int, validation_share: float) -> bool:
    digest = hashlib.sha256(f"{seed}:{key}".encode()).hexdigest()[:16]
    return int(digest, 16) / 2**64 < validation_share


def split_by_question(table: pa.Table, *, validation_share: float, seed: int) -> tuple[pa.Table, pa.Table]:
    """(train, validation) rows of `table` (needs question_id; record_id when present)."""
    question_ids = table.column("question_id").to_pylist()
    record_ids = table.column("record_id").to_pylist() if "record_id" in table.column_names else [None] * len(question_ids)
    mask = pa.array([is_validation(split_key(q, r), seed=seed, validation_share=validation_share)
                     for q, r in zip(question_ids, record_ids, strict=True)], pa.bool_())
    return table.filter(pc.invert(mask)), table.filter(mask)


def split_manifest(*, train: pa.Table, validation: pa.Table, seed: int, validation_share: float,
                   source: dict[str, Any]) -> dict[str, Any]:
    """What `split.json` holds: the rule and seed, and the held-out ids spelled out."""
    def keys(table: pa.Table) -> list[str]:
        record_ids = table.column("record_id").to_pylist() if "record_id" in table.column_names else [None] * table.num_rows
        return sorted({split_key(q, r) for q, r in zip(table.column("question_id").to_pylist(), record_ids, strict=True)})

    def ids(table: pa.Table, column: str) -> list[Any]:
        return sorted(table.column(column).to_pylist()) if column in table.column_names else []

    return {
        "format": SPLIT_FORMAT, "source": source, "seed": seed, "validation_share": validation_share,
        "rule": SPLIT_RULE,
        "counts": {"train_dialogues": train.num_rows, "validation_dialogues": validation.num_rows,
                   "train_questions": len(keys(train)), "validation_questions": len(keys(validation))},
        "validation": {"question_ids": keys(validation), "record_ids": ids(validation, "record_id"),
                       "dialogue_ids": ids(validation, "id")},
    }
