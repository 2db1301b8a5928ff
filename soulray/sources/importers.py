"""Importers: public counseling corpora in their released formats → Parquet.

- PsyQA (JSON list of questions with answers) → long Q&A table (one row per answer), the shape the
  regenerate job reads.
- SMILECHAT (one JSON file per dialogue, roles client/counselor) and SoulChatCorpus (one JSON array of
  `{id, topic, messages}`) → dialogue table (`id`, `topic`, `messages`); `qa=True` instead extracts
  each dialogue's first client/counselor exchange, which in SMILECHAT is the original PsyQA pair
  (answer_id: the dialogue's id; question_id: `schema.question_group` of the question, shared by
  every rewrite of one PsyQA question).

Formats: as the PsyQA, SMILECHAT and SoulChatCorpus releases publish them. Every structural problem is an error that
names the file and the item; `dialogue_items` instead hands a bad dialogue back with its problem (a
reason and that message), so the clean job can reject that one row and keep the rest.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from soulray.errors import SourceError
from soulray.schema import MESSAGE, ROLE_ASSISTANT, ROLE_NAMES, ROLE_USER, question_group

QA_TABLE = pa.schema(
    [
        ("question_id", pa.string()),
        ("answer_id", pa.string()),
        ("topic", pa.string()),
        ("question", pa.string()),
        ("description", pa.string()),
        ("answer", pa.string()),
        ("keywords", pa.list_(pa.string())),
    ]
)
DIALOGUE_TABLE = pa.schema([("id", pa.string()), ("topic", pa.string()), ("messages", pa.list_(MESSAGE))])

_SMILE_ROLES = ROLE_NAMES
FORMATS = ("psyqa", "smilechat", "soulchatcorpus")
DIALOGUE_FORMATS = ("smilechat", "soulchatcorpus")


@dataclass(frozen=True)
class DialogueItem:
    """One dialogue of a JSON corpus; `problem` is (reason, detail) when it cannot be used as text."""

    id: str | None
    topic: str
    messages: list[dict[str, str]]
    problem: tuple[str, str] | None = None


class ItemError(SourceError):
    """What is wrong with one item of a file (the file itself is readable): malformed_item,
    non_text_value or unknown_role."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


def import_corpus(fmt: str, source: str | Path, output: str | Path, *, qa: bool = False) -> pa.Table:
    """Convert `source` in format `fmt` to a Parquet file at `output`; returns the table written."""
    source = Path(source)
    if not source.exists():
        raise SourceError(f"{source}: path does not exist")
    if fmt == "psyqa":
        table = psyqa_to_table(source)
    elif fmt in DIALOGUE_FORMATS:
        table = dialogues_to_table(dialogue_items(fmt, source), qa=qa)
    else:
        raise SourceError(f"unknown import format {fmt!r}; choose one of {', '.join(FORMATS)}")
    if table.num_rows == 0:
        raise SourceError(f"{source}: no rows to import")
    Path(output).parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, output, compression="zstd")
    return table


def psyqa_to_table(path: Path) -> pa.Table:
    items = _load_json(path)
    if not isinstance(items, list):
        raise SourceError(f"{path}: PsyQA must be a JSON list of questions, got {type(items).__name__}")
    rows: dict[str, list[Any]] = {name: [] for name in QA_TABLE.names}
    for index, item in enumerate(items):
        where = f"{path}: item {index}"
        _require(item, dict, where)
        question_id = _identifier(_field(item, "questionID", where), f"{where}.questionID")
        keywords = [word.strip() for word in str(item.get("keywords") or "").split(",") if word.strip()]
        answers = _field(item, "answers", where)
        _require(answers, list, f"{where}.answers")
        for answer_index, answer in enumerate(answers):
            _require(answer, dict, f"{where}.answers[{answer_index}]")
            rows["question_id"].append(question_id)
            rows["answer_id"].append(f"{question_id}-{answer_index}")
            rows["topic"].append(keywords[0] if keywords else "")
            rows["question"].append(_text(item, "question", where))
            rows["description"].append(_text(item, "description", where, required=False))
            rows["answer"].append(_text(answer, "answer_text", f"{where}.answers[{answer_index}]"))
            rows["keywords"].append(keywords)
    return pa.Table.from_pydict(rows, schema=QA_TABLE)


def dialogue_items(fmt: str, source: str | Path) -> Iterator[DialogueItem]:
    """The dialogues of a SMILECHAT file/folder or a SoulChatCorpus file, each with its problem if any.
    A file that is not JSON, or not a list, is still an error (SourceError naming it)."""
    if fmt not in DIALOGUE_FORMATS:
        raise SourceError(f"unknown dialogue format {fmt!r}; choose one of {', '.join(DIALOGUE_FORMATS)}")
    yield from (_smilechat_dialogues if fmt == "smilechat" else _soulchat_dialogues)(Path(source))


def dialogues_to_table(dialogues: Iterable[DialogueItem], *, qa: bool) -> pa.Table:
    """The import command's table: strict, the first bad dialogue is an error naming its file and item."""
    checked = []
    for item in dialogues:
        if item.problem:
            raise SourceError(item.problem[1])
        checked.append((item.id, item.topic, item.messages))
    if not qa:
        ids, topics, messages = [], [], []
        for dialogue_id, topic, turns in checked:
            ids.append(dialogue_id)
            topics.append(topic)
            messages.append(turns)
        return pa.Table.from_pydict({"id": ids, "topic": topics, "messages": messages}, schema=DIALOGUE_TABLE)
    rows: dict[str, list[Any]] = {name: [] for name in QA_TABLE.names}
    for dialogue_id, topic, turns in checked:
        if len(turns) < 2 or turns[0]["role"] != ROLE_USER or turns[1]["role"] != ROLE_ASSISTANT:
            continue  # no first exchange to extract; the regenerate job never sees it
        # SMILECHAT rewrites one PsyQA question up to 10 times: its answers share the opening question
        rows["question_id"].append(question_group(turns[0]["content"]))
        rows["answer_id"].append(dialogue_id)
        rows["topic"].append(topic)
        rows["question"].append(turns[0]["content"])
        rows["description"].append("")
        rows["answer"].append(turns[1]["content"])
        rows["keywords"].append([])
    return pa.Table.from_pydict(rows, schema=QA_TABLE)


def _smilechat_dialogues(path: Path) -> Iterator[DialogueItem]:
    files = sorted(path.rglob("*.json")) if path.is_dir() else [path]
    if not files:
        raise SourceError(f"{path}: no .json files found")
    for file in files:
        turns = _load_json(file)
        try:
            _require(turns, list, f"{file}: a SMILECHAT dialogue")
            yield DialogueItem(file.stem, "", [_message(turn, f"{file}: turn {index}")
                                               for index, turn in enumerate(turns)])
        except ItemError as exc:
            yield DialogueItem(file.stem, "", [], (exc.reason, str(exc)))


def _soulchat_dialogues(path: Path) -> Iterator[DialogueItem]:
    items = _load_json(path)
    _require(items, list, f"{path}: SoulChatCorpus")
    for index, item in enumerate(items):
        where = f"{path}: item {index}"
        try:
            _require(item, dict, where)
            turns = _field(item, "messages", where)
            _require(turns, list, f"{where}.messages")
            messages = [_message(turn, f"{where}.messages[{turn_index}]") for turn_index, turn in enumerate(turns)]
            yield DialogueItem(_identifier(_field(item, "id", where), f"{where}.id"),
                               _text(item, "topic", where, required=False), messages)
        except ItemError as exc:
            yield DialogueItem(None, "", [], (exc.reason, str(exc)))


def _message(turn: Any, where: str) -> dict[str, str]:
    _require(turn, dict, where)
    role = _text(turn, "role", where)
    if role not in _SMILE_ROLES:
        raise ItemError("unknown_role", f"{where}: unknown role {role!r} (expected one of {sorted(_SMILE_ROLES)})")
    return {"role": _SMILE_ROLES[role], "content": _text(turn, "content", where)}


def _identifier(value: Any, where: str) -> str:
    """An id as text: JSON text or a whole number, never the repr of an object, list or float."""
    if isinstance(value, str):
        return value
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    raise ItemError("non_text_value", f"{where}: expected text or a whole number, got {_json_kind(value)}")


def _json_kind(value: Any) -> str:
    kinds = {dict: "a JSON object", list: "a JSON list", bool: "true/false", float: "a decimal number"}
    return next((name for kind, name in kinds.items() if isinstance(value, kind)), type(value).__name__)


def _load_json(path: Path) -> Any:
    try:
        return json.loads(path.read_bytes().decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise SourceError(f"{path}: not UTF-8 text (bad byte at offset {exc.start})") from None
    except json.JSONDecodeError as exc:
        raise SourceError(f"{path}: invalid JSON at line {exc.lineno}, column {exc.colno}: {exc.msg}") from None


def _require(value: Any, kind: type, where: str) -> None:
    if not isinstance(value, kind):
        raise ItemError("malformed_item", f"{where}: expected a JSON {'list' if kind is list else 'object'}, "
                                          f"got {type(value).__name__}")


def _field(item: dict[str, Any], key: str, where: str) -> Any:
    if key not in item:
        raise ItemError("malformed_item", f"{where}: missing key {key!r}")
    return item[key]


def _text(item: dict[str, Any], key: str, where: str, *, required: bool = True) -> str:
    value = item.get(key) if not required else _field(item, key, where)
    if value is None:
        return ""
    if not isinstance(value, str):
        raise ItemError("non_text_value", f"{where}.{key}: expected text, got {_json_kind(value)}")
    return value
