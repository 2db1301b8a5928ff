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

# What the dialogue filter chain (soulray/filters/) measured of a kept row, one named float per measure;
# null where that filter was not in the chain. A struct, not a map: Hugging Face `datasets` has no
# dtype for Arrow maps (load_dataset("parquet", …) refuses the file), and a struct reads as a plain
# dict in datasets, pandas and polars alike. A filter's score name must be a field here.
SCORES = pa.struct([
    ("crisis_turns", pa.float64()),  # ethics.CrisisScreen: turns matching the crisis screen
    ("pii_redactions", pa.float64()),  # pii.PiiRedact: contact details replaced by placeholders
    ("repetition", pa.float64()),  # quality.Repetition: share of repeated character windows
    ("cjk_ratio", pa.float64()),  # quality.CjkRatio: share of CJK among letters
    ("length_ratio", pa.float64()),  # quality.LengthRatio: longest / shortest counselor turn
    ("advice_list_rate", pa.float64()),  # template.AdviceList: share of counselor turns that are lists
    # template.TemplateMarkers: counselor turns opening with a stock sentence (config.TEMPLATE_RULES, a style
    # choice scored rather than cut); a new "score" rule there needs its marker_<name> field here
    ("marker_stock_opening", pa.float64()),
])

# A multi-turn dialogue, SoulChatCorpus layout plus provenance.
# - `id`: the input's own id, kept as given and published as text (an integer id 7 becomes "7", so
#   string and integer ids share one type): the corpus's `id` for `soulray clean`, the source's
#   answer id for the regenerate job. Identity for caches and dedup is `record_id`, a content hash.
# - `question_id`: the question a dialogue answers. Several dialogues answer one question (PsyQA has
#   several answers per question, SMILECHAT rewrites each), and splits go by it (soulray/train/split.py)
#   so no question is on both sides: the source's question id, else `question_group` of the question.
DIALOGUE = pa.schema(
    [
        ("id", pa.string()),
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
        # Filled by the dialogue filter chain: its measures of a kept row, and the screens that flagged
        # it for review.
        ("scores", SCORES),
        ("flags", pa.list_(pa.string())),
    ]
)

# Every row that does not reach the output ends here, saying which stage dropped it and why.
REJECT = pa.schema(
    [
        ("record_id", pa.string()),
        ("id", pa.string()),  # the input's id of the row: a dialogue's `id`, a rewrite unit's answer_id
        ("stage", pa.string()),
        ("reason", pa.string()),
        ("detail", pa.string()),
        ("source_file", pa.string()),
        ("source_row", pa.int64()),
    ]
)

ROLE_USER = "user"
ROLE_ASSISTANT = "assistant"
# The role vocabularies of the corpora soulray reads (SMILECHAT: client/counselor), mapped to ours.
ROLE_NAMES = {"user": ROLE_USER, "client": ROLE_USER, "assistant": ROLE_ASSISTANT, "counselor": ROLE_ASSISTANT}


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


def dialogue_record_id(messages: list[dict[str, str]] | None) -> str:
    """A stable content hash of a whole dialogue (32 hex chars of SHA-256 over its canonical turns), the
    record_id of a dialogue that did not come from a rewrite unit (a corpus cleaned or imported), so
    reruns and dedup agree on what a row is."""
    payload = "\x1e".join(f"{turn['role']}\x1f{canonical_text(turn['content'])}" for turn in messages or [])
    return hashlib.sha256(payload.encode("utf-8")).hexdigest()[:32]


def question_group(question: str | None) -> str | None:
    """The `question_id` of a question that came without one: a hash of its normalised text, so the
    answers to one question share it however their rows are spread. Normalised beyond canonical_text
    (NFKC: full-width and half-width forms alike; no whitespace; case folded), because copies of one
    question differ in exactly those. None for a missing or blank question."""
    if question is None:
        return None
    normal = "".join(unicodedata.normalize("NFKC", canonical_text(question)).casefold().split())
    if not normal:
        return None
    return "q-" + hashlib.sha256(normal.encode("utf-8")).hexdigest()[:16]


def first_user_turn(messages: list[dict[str, str]] | None) -> str | None:
    """The question a dialogue answers, as far as the dialogue itself tells: its first client turn.
    SMILECHAT opens every rewrite of a PsyQA answer with that PsyQA question, so the up to 10
    dialogues that answer one question share it."""
    return next((turn["content"] for turn in messages or [] if turn["role"] == ROLE_USER), None)


def empty_table(schema: pa.Schema) -> pa.Table:
    return schema.empty_table()


# The stages, in the order rows meet them; each name is the `reject_stage` of the rows it drops, and
# report.py draws the flow in this order.
NORMALIZE, FILTER_SOURCE, DEDUP_SOURCE = "normalize", "filter_source", "dedup_source"
REWRITE, PARSE, FILTER_DIALOGUE, DEDUP_DIALOGUE = "rewrite", "parse", "filter_dialogue", "dedup_dialogue"
STAGE_ORDER = (NORMALIZE, FILTER_SOURCE, DEDUP_SOURCE, REWRITE, PARSE, FILTER_DIALOGUE, DEDUP_DIALOGUE)

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
