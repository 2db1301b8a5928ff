"""The data model, defined once: Arrow schemas for every table soulray reads or writes.

Dialogues follow the released SoulChatCorpus (`id`, `topic`, `messages: [{role, content}]`) so the
output loads into common fine-tuning tools unchanged; the `用户：/心理咨询师：` string form is only a
rendering for prompts and training.
"""

from __future__ import annotations

import hashlib
import unicodedata

import pyarrow as pa

# A source Q&A row in long form (one row per answer), after column mapping.
SOURCE_QA = pa.schema(
    [
        ("question_id", pa.string()),
        ("answer_id", pa.string()),
        ("topic", pa.string()),
        ("question", pa.string()),
        ("description", pa.string()),
        ("answer", pa.string()),
    ]
)

# One rewrite unit: one question with one of its answers, identified by `record_id`, with where it
# came from so any reject can be traced back to a file and row.
UNIT = pa.schema(
    [
        ("record_id", pa.string()),
        ("question_id", pa.string()),
        ("answer_id", pa.string()),
        ("topic", pa.string()),
        ("question", pa.string()),
        ("description", pa.string()),
        ("answer", pa.string()),
        ("source_file", pa.string()),
        ("source_row", pa.int64()),
    ]
)

MESSAGE = pa.struct([("role", pa.string()), ("content", pa.string())])

# A multi-turn dialogue, SoulChatCorpus layout plus provenance. `id` is an integer derived from
# record_id (stable across reruns), as the release uses integer ids.
DIALOGUE = pa.schema(
    [
        ("id", pa.int64()),
        ("record_id", pa.string()),
        ("question_id", pa.string()),
        ("topic", pa.string()),
        ("messages", pa.list_(MESSAGE)),
        ("prompt_version", pa.string()),
        ("model", pa.string()),
        ("api_key_name", pa.string()),
        ("attempts", pa.int32()),
        ("prompt_tokens", pa.int64()),
        ("completion_tokens", pa.int64()),
        ("cost_usd", pa.float64()),
        ("source_file", pa.string()),
        ("source_row", pa.int64()),
        # Filled by the dialogue filter chain (soulray/filters/): every measure it took of a kept row
        # (repetition, cjk_ratio, length_ratio, pii_redactions, …) and the screens that flagged it for review.
        ("scores", pa.map_(pa.string(), pa.float64())),
        ("flags", pa.list_(pa.string())),
    ]
)

# Every row that does not reach the output ends here, saying which stage dropped it and why.
REJECT = pa.schema(
    [
        ("record_id", pa.string()),
        ("stage", pa.string()),
        ("reason", pa.string()),
        ("detail", pa.string()),
        ("source_file", pa.string()),
        ("source_row", pa.int64()),
    ]
)

ROLE_USER = "user"
ROLE_ASSISTANT = "assistant"


def canonical_text(text: str | None) -> str:
    """The form of a text that identity is computed on: NFC, trimmed, line endings unified."""
    if text is None:
        return ""
    return unicodedata.normalize("NFC", text).replace("\r\n", "\n").strip()


def record_id(question: str | None, description: str | None, answer: str | None) -> str:
    """A stable content hash of one rewrite unit (32 hex chars of SHA-256).

    Only the text that reaches the prompt counts, so the same Q&A from two files (or two reruns) gets
    the same id, and the cache and dedup agree on what a row is.
    """
    payload = "\x1f".join(canonical_text(part) for part in (question, description, answer))
    return hashlib.sha256(payload.encode("utf-8")).hexdigest()[:32]


def dialogue_id(record: str) -> int:
    """The integer `id` of a dialogue: the first 63 bits of its record_id."""
    return int(record[:16], 16) & 0x7FFF_FFFF_FFFF_FFFF


def empty_table(schema: pa.Schema) -> pa.Table:
    return schema.empty_table()


# Rows flow through the pipeline in one table: the unit columns plus a reject mark. A stage that drops
# a row fills the mark instead of removing it, and the writer splits marked rows into the reject
# table, so every input row ends up somewhere by construction.
REJECT_MARK = [("reject_stage", pa.string()), ("reject_reason", pa.string()), ("reject_detail", pa.string())]
WORKING_UNIT = pa.schema(list(UNIT) + [pa.field(name, dtype) for name, dtype in REJECT_MARK])
WORKING_DIALOGUE = pa.schema(list(DIALOGUE) + [pa.field(name, dtype) for name, dtype in REJECT_MARK])


# -- evaluation (soulray/evaluate) ---------------------------------------------------------------------
# One held-out sample: the messages before a counselor turn, and that turn as the reference.
EVAL_SAMPLE = pa.schema([
    ("sample_id", pa.string()),  # <record_id>:<turn>
    ("record_id", pa.string()),
    ("question_id", pa.string()),
    ("topic", pa.string()),
    ("turn", pa.int32()),  # index of the reference in the dialogue's messages
    ("history", pa.list_(MESSAGE)),
    ("reference", pa.string()),
])

# One model's answer to one sample. A failed generation keeps its row, empty, with the reason in `error`.
EVAL_RESPONSE = pa.schema([
    ("sample_id", pa.string()),
    ("model", pa.string()),  # the label of the evaluated model
    ("response", pa.string()),
    ("finish_reason", pa.string()),
    ("prompt_tokens", pa.int64()),
    ("completion_tokens", pa.int64()),
    ("cost_usd", pa.float64()),
    ("error", pa.string()),
])

# One judge rating of one response in one judge run; scores are null when the judge gave none (`error`).
JUDGE_SCORE = pa.schema([
    ("sample_id", pa.string()),
    ("model", pa.string()),
    ("run", pa.int32()),
    ("content", pa.int8()),  # Con. 0-2
    ("empathy", pa.int8()),  # Emp. 0-2
    ("helpfulness", pa.int8()),  # Hel. 0-2
    ("safety", pa.int8()),  # Saf. 0-1
    ("judge_model", pa.string()),
    ("rubric_version", pa.string()),
    ("attempts", pa.int32()),
    ("prompt_tokens", pa.int64()),
    ("completion_tokens", pa.int64()),
    ("cost_usd", pa.float64()),
    ("error", pa.string()),
])
