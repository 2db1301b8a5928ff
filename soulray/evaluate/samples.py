"""Held-out evaluation samples: the next counselor turn of a dialogue, given everything before it.

SoulChat counts one sample per counselor turn and evaluates 10,000 random ones (SOULCHAT.md). Here a
sample is (a held-out dialogue, one of its counselor turns): the history is every message before that
turn, the reference is the turn itself. Held-out means the dialogue's question_id is on the evaluation
side of the split, so no answer to a question the model was trained on is ever scored (PsyQA has
several answers per question; splitting by dialogue would leak). The selection is a seeded hash order,
so the same version and seed give the same samples on every machine, whatever the block layout.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from typing import Any

import pyarrow as pa

from soulray.errors import SoulrayError
from soulray.schema import EVAL_SAMPLE, ROLE_ASSISTANT, ROLE_USER
from soulray.train.split import SPLIT_FORMAT, is_validation, split_key

HeldOut = Callable[[str, str], bool]  # (question_id, record_id) → on the evaluation side?


def hash_split(*, validation_share: float, seed: int) -> HeldOut:
    """The fine-tuning job's own rule (soulray.train.split): with its seed and validation share, the
    held-out questions are exactly the ones that job kept out of training."""
    def held_out(question_id: str, record_id: str) -> bool:
        return is_validation(split_key(question_id, record_id), seed=seed, validation_share=validation_share)

    return held_out


def listed_split(split: dict[str, Any]) -> HeldOut:
    """Held out = named in a fine-tuning run's split.json (its validation question ids)."""
    if split.get("format") != SPLIT_FORMAT:
        raise SoulrayError(f"split file: format {split.get('format')!r}, expected {SPLIT_FORMAT!r}")
    held = frozenset(split["validation"]["question_ids"])

    def held_out(question_id: str, record_id: str) -> bool:
        return split_key(question_id, record_id) in held

    return held_out


def next_turn_samples(dialogues: pa.Table, *, held_out: HeldOut, limit: int | None,
                      seed: int) -> pa.Table:
    """Every counselor turn that answers a user turn in a held-out dialogue; then the first `limit` of
    them in a seeded hash order (a uniform random sample, the same one on every run)."""
    keep = pa.array([held_out(question_id, record_id) for question_id, record_id in
                     zip(dialogues["question_id"].to_pylist(), dialogues["record_id"].to_pylist(), strict=True)],
                    pa.bool_())
    rows = []
    for dialogue in dialogues.filter(keep).select(["record_id", "question_id", "topic", "messages"]).to_pylist():
        messages = dialogue["messages"] or []
        for turn in range(1, len(messages)):
            # a counselor turn that follows a counselor turn (a known defect of released corpora) has no
            # user message to answer: skip it rather than score a continuation
            if messages[turn]["role"] != ROLE_ASSISTANT or messages[turn - 1]["role"] != ROLE_USER:
                continue
            if not messages[turn]["content"].strip():
                continue
            rows.append({"sample_id": f"{dialogue['record_id']}:{turn}", "record_id": dialogue["record_id"],
                         "question_id": dialogue["question_id"], "topic": dialogue["topic"], "turn": turn,
                         "history": messages[:turn], "reference": messages[turn]["content"]})
    rows.sort(key=lambda row: _unit_interval(f"sample:{seed}:{row['sample_id']}"))
    if limit is not None:
        rows = rows[:limit]
    return pa.Table.from_pylist(rows, schema=EVAL_SAMPLE)


def sample_seed(sample_id: str, seed: int) -> int:
    """The sampling seed of one sample: generation draws depend on it alone, not on batch or actor."""
    return int(hashlib.sha256(f"decode:{seed}:{sample_id}".encode()).hexdigest()[:15], 16)


def _unit_interval(text: str) -> float:
    return int(hashlib.sha256(text.encode()).hexdigest()[:15], 16) / 16 ** 15
