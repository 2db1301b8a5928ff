"""The clean job, top to bottom: an existing multi-turn corpus → dialogue filters → a published version.

For corpora people already hold (the released SoulChatCorpus, SMILECHAT, their own), cleaned without
paying for a rewrite. Read by `DialogueSource` (Parquet in the SoulChatCorpus layout `id, topic,
messages` through soulray/sources/reader.py, or JSON converted by the importers; roles mapped, each row
named by `schema.dialogue_record_id`), then the stages of `pipeline`: the dialogue filter chain and
MinHash dedup, run and published by soulray/pipeline.py like the regenerate job. Every input dialogue
ends as a published row or a reject row.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from soulray.config import CleanConfig
from soulray.errors import SourceError
from soulray.fs import S3Config
from soulray.pipeline import Context, JobSettings, Lineage, Pipeline, RunResult
from soulray.pipeline import run as run_pipeline
from soulray.schema import (
    DEDUP_DIALOGUE,
    DIALOGUE,
    FILTER_DIALOGUE,
    MESSAGE,
    NORMALIZE,
    ROLE_ASSISTANT,
    ROLE_NAMES,
    ROLE_USER,
    WORKING_DIALOGUE,
    dialogue_record_id,
    first_user_turn,
    question_group,
)
from soulray.sources.importers import dialogue_items
from soulray.sources.reader import Fragment, is_text_type, plan_files, read_fragments, read_row_group
from soulray.sources.settings import CleanInput
from soulray.stages import DedupStage, FilterStage
from soulray.store import InputFile

if TYPE_CHECKING:
    import ray.data

STAGE = NORMALIZE
BLOCK_ROWS = 5_000  # rows per pipeline block: a filter batch of a few ms, many blocks per core
# The input as read: `id` and `question_id` as text (integer ids in decimal), null where absent. A row
# that cannot be used (bytes that are not UTF-8, a value that is not text, a malformed JSON item)
# carries its reject reason from here on.
RAW_DIALOGUE = pa.schema([("id", pa.string()), ("question_id", pa.string()), ("topic", pa.string()),
                          ("messages", pa.list_(MESSAGE)), ("source_file", pa.string()), ("source_row", pa.int64()),
                          ("reject_reason", pa.string()), ("reject_detail", pa.string())])


def pipeline(config: CleanConfig) -> Pipeline:
    """The clean job's stages, each given only its own settings."""
    stages = [FilterStage(config.filters.dialogue, name=FILTER_DIALOGUE, kind="dialogue"),
              DedupStage(config.dedup, name=DEDUP_DIALOGUE, against=config.dedup_against)]
    return Pipeline(job="clean", source=DialogueSource(config.input), stages=stages, data_schema=DIALOGUE)


def run(config: CleanConfig) -> RunResult:
    return run_pipeline(pipeline(config), settings=JobSettings.of(config))


# -- reading ----------------------------------------------------------------------------------------
@dataclass
class DialogueSource:
    """A multi-turn corpus: Parquet in the SoulChatCorpus layout (read on the workers, a row group per
    task, by soulray/sources/reader.py), or JSON the importers read (converted on the driver)."""

    spec: CleanInput
    fragments: list[Fragment] = field(default_factory=list)
    table: pa.Table | None = None  # JSON input, as RAW_DIALOGUE rows

    def plan(self, s3: S3Config) -> Lineage:
        """Check the input and decide how it is read. Raises SourceError naming the file."""
        fmt = self.spec.format if self.spec.format != "auto" else detect_format(self.spec.path)
        if fmt != "parquet":
            self.table, lineage = _plan_json(self.spec.path, fmt)
            return lineage
        plan = plan_files(self.spec.path, check=_check_columns, s3=s3)
        if plan.rows == 0:
            raise SourceError(f"{self.spec.path}: the input holds no dialogues (0 rows)")
        self.fragments = plan.fragments
        return Lineage(inputs=[InputFile(**item) for item in plan.inputs], rows=plan.rows)

    def read(self, context: Context) -> ray.data.Dataset:
        import ray.data

        if self.table is None:
            return read_fragments(self.fragments, convert=partial(read_fragment, s3=context.s3),
                                  block_rows=BLOCK_ROWS, wrap=context.clock.wrap)
        slices = [self.table.slice(start, BLOCK_ROWS) for start in range(0, self.table.num_rows, BLOCK_ROWS)]
        fn, kwargs = context.clock.wrap(working_dialogues, stage=STAGE, kwargs={})
        return ray.data.from_arrow(slices).map_batches(fn, fn_kwargs=kwargs, batch_size=None, batch_format="pyarrow")


def read_fragment(fragment: Fragment, *, s3: S3Config | None = None) -> pa.Table:
    """One row group as WORKING_DIALOGUE rows; a row whose values cannot be read as text is marked with
    its reject reason, never a crash of the whole file."""
    table = read_row_group(fragment.uri, fragment.row_group, s3=s3)
    return working_dialogues(raw_dialogues(table, source_file=fragment.uri, first_row=fragment.first_row))


def detect_format(path: str) -> str:
    """parquet, smilechat or soulchatcorpus, from the path and (for JSON) the first bytes of the file."""
    if path.startswith("s3://") or path.endswith(".parquet"):
        return "parquet"
    local = Path(path)
    if local.is_dir():
        if any(local.rglob("*.parquet")):
            return "parquet"
        if any(local.rglob("*.json")):
            return "smilechat"
        raise SourceError(f"{path}: folder holds no .parquet or .json files")
    if not local.is_file():
        raise SourceError(f"{path}: input path does not exist")
    with open(local, "rb") as handle:
        head = handle.read(4096).decode("utf-8", errors="replace").lstrip("\ufeff \t\r\n")
    if head.startswith("["):
        # SoulChatCorpus: a list of {id, topic, messages: [{role, …}]}; a SMILECHAT file: a list of {role, …}
        messages, role = head.find('"messages"'), head.find('"role"')
        return "soulchatcorpus" if messages >= 0 and (role < 0 or messages < role) else "smilechat"
    if head[:4] == "PAR1":
        return "parquet"
    raise SourceError(f"{path}: neither Parquet nor a JSON list; give input.format explicitly")


def _plan_json(path: str, fmt: str) -> tuple[pa.Table, Lineage]:
    if not Path(path).exists():
        raise SourceError(f"{path}: path does not exist")
    items = list(dialogue_items(fmt, path))
    if not items:
        raise SourceError(f"{path}: no dialogues in the input")
    table = pa.table({
        "id": [item.id for item in items], "question_id": [None] * len(items),  # the JSON formats have none
        "topic": [item.topic for item in items],
        "messages": [item.messages for item in items], "source_file": [str(path)] * len(items),
        "source_row": np.arange(len(items)), "reject_reason": [item.problem and item.problem[0] for item in items],
        "reject_detail": [item.problem and item.problem[1] for item in items]}, schema=RAW_DIALOGUE)
    files = sorted(Path(path).rglob("*.json")) if Path(path).is_dir() else [Path(path)]
    digest = hashlib.sha256()
    for file in files:
        digest.update(file.name.encode() + b"\0" + file.read_bytes())
    lineage = InputFile(uri=str(Path(path).resolve()), bytes=sum(file.stat().st_size for file in files),
                        rows=table.num_rows, fingerprint=digest.hexdigest())
    return table, Lineage(inputs=[lineage], rows=table.num_rows)


def _check_columns(uri: str, schema: pa.Schema) -> None:
    if "messages" not in schema.names:
        raise SourceError(f"{uri}: missing column 'messages' (list of {{role, content}}); the file has "
                          f"columns {schema.names}")
    dtype = schema.field("messages").type
    item = dtype.value_type if pa.types.is_list(dtype) or pa.types.is_large_list(dtype) else None
    if item is None or not pa.types.is_struct(item) or item.get_field_index("role") < 0 \
            or item.get_field_index("content") < 0 or not is_text_type(item.field("role").type) \
            or not is_text_type(item.field("content").type):
        raise SourceError(f"{uri}: column 'messages' has type {dtype}, expected list<struct<role, content>> "
                          "with text role and content")


def raw_dialogues(table: pa.Table, *, source_file: str, first_row: int = 0) -> pa.Table:
    """A table in the SoulChatCorpus layout (`messages`; optional `id`, `question_id`, `topic`) as
    RAW_DIALOGUE rows (ids and topic as text, where they came from)."""
    rows = table.num_rows
    problems = _RowProblems(rows)
    messages = table["messages"].combine_chunks()
    turns = pc.list_flatten(messages)
    turn_rows = pc.list_parent_indices(messages).to_numpy(zero_copy_only=False)
    values = pa.StructArray.from_arrays(
        [_text_values(turns.field(name), f"messages.{name}", turn_rows, problems) for name in ("role", "content")],
        fields=list(MESSAGE))
    columns = {
        "id": _text_column(table, "id", problems),
        "question_id": _text_column(table, "question_id", problems),
        "topic": _text_column(table, "topic", problems),
        "messages": _relist(messages, values),
        "source_file": pa.array([source_file] * rows, pa.string()),
        "source_row": pa.array(np.arange(first_row, first_row + rows), pa.int64()),
        "reject_reason": pa.array(problems.reasons, pa.string()),
        "reject_detail": pa.array(problems.details, pa.string()),
    }
    return pa.table(columns, schema=RAW_DIALOGUE)


class _RowProblems:
    """The first problem found in each row: its reject reason and detail."""

    def __init__(self, rows: int) -> None:
        self.reasons: list[str | None] = [None] * rows
        self.details: list[str | None] = [None] * rows

    def add(self, rows: Iterable[int], reason: str, detail: str) -> None:
        for row in rows:
            if self.reasons[row] is None:
                self.reasons[row], self.details[row] = reason, detail


def _text_column(table: pa.Table, name: str, problems: _RowProblems) -> pa.Array:
    """Column `name` as text: strings and whole numbers as they are, bytes when UTF-8; any other type
    (an object, a list, a decimal) is no text: those rows are rejected, never published as a repr."""
    if name not in table.column_names:
        return pa.nulls(table.num_rows, pa.string())
    column = table[name].combine_chunks()
    if pa.types.is_dictionary(column.type):
        column = column.dictionary_decode()
    if pa.types.is_integer(column.type) or pa.types.is_null(column.type):
        return column.cast(pa.string())
    if not is_text_type(column.type):
        problems.add(np.flatnonzero(column.is_valid().to_numpy(zero_copy_only=False)), "non_text_value",
                     f"column {name!r} has type {column.type}, expected text or a whole number")
        return pa.nulls(table.num_rows, pa.string())
    return _text_values(column, name, np.arange(table.num_rows), problems)


def _text_values(values: pa.Array, name: str, rows_of_values: np.ndarray, problems: _RowProblems) -> pa.Array:
    """Text or bytes → string; bytes that are not UTF-8 are read with replacement characters and their
    rows marked invalid_utf8 (the vectorised cast is the common path; the per-value one only runs when
    it fails)."""
    if pa.types.is_dictionary(values.type):
        values = values.dictionary_decode()
    try:
        return values.cast(pa.string())
    except pa.ArrowInvalid:
        texts, bad = [], []
        for index, value in enumerate(values.to_pylist()):
            try:
                texts.append(value.decode("utf-8") if isinstance(value, bytes) else value)
            except UnicodeDecodeError:
                texts.append(value.decode("utf-8", errors="replace"))
                bad.append(rows_of_values[index])
        problems.add(bad, "invalid_utf8", f"{name} holds bytes that are not UTF-8")
        return pa.array(texts, pa.string())


def _relist(lists: pa.ListArray, values: pa.StructArray) -> pa.ListArray:
    """`values` (one per item of `lists`, flattened) back into lists shaped as `lists`."""
    lengths = pc.fill_null(pc.list_value_length(lists), 0).to_numpy(zero_copy_only=False)
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int32)
    return pa.ListArray.from_arrays(pa.array(offsets), values, type=pa.list_(MESSAGE), mask=lists.is_null())


# -- rows -------------------------------------------------------------------------------------------
def working_dialogues(raw: pa.Table) -> pa.Table:
    """RAW_DIALOGUE rows → WORKING_DIALOGUE rows: roles mapped to user/assistant, the input's id kept
    (`<file name>:<row>` where it has none, as the source reader names answers without an id), a
    content-based record_id, the question group, and a reject mark on unreadable rows, unknown roles
    and dialogues without messages."""
    messages = _map_roles(raw["messages"].combine_chunks())
    turns_per_row = messages.to_pylist()
    reasons, details = _row_rejects(raw, messages)
    # a row that could not be read has no content to name it by: its place in the input names it
    record_ids = [_place_record_id(source_file, source_row) if reason in _UNREADABLE else dialogue_record_id(turns)
                  for turns, reason, source_file, source_row in zip(
                      turns_per_row, reasons, raw["source_file"].to_pylist(), raw["source_row"].to_pylist(),
                      strict=True)]
    rows = raw.num_rows
    columns = {
        "id": _ids(raw),
        "record_id": record_ids,
        "question_id": [given or question_group(first_user_turn(turns))
                        for given, turns in zip(raw["question_id"].to_pylist(), turns_per_row, strict=True)],
        "topic": pc.fill_null(raw["topic"], ""),
        "messages": messages,
        "prompt_version": pa.nulls(rows, pa.string()),
        "model": pa.nulls(rows, pa.string()),
        "api_key_name": pa.nulls(rows, pa.string()),
        "attempts": pa.array(np.zeros(rows, dtype=np.int32)),
        "prompt_tokens": pa.array(np.zeros(rows, dtype=np.int64)),
        "completion_tokens": pa.array(np.zeros(rows, dtype=np.int64)),
        "cost_usd": pa.array(np.zeros(rows)),
        "source_file": raw["source_file"],
        "source_row": raw["source_row"],
        "scores": pa.nulls(rows, WORKING_DIALOGUE.field("scores").type),
        "flags": pa.nulls(rows, WORKING_DIALOGUE.field("flags").type),
        "reject_stage": pa.array([STAGE if reason else None for reason in reasons], pa.string()),
        "reject_reason": pa.array(reasons, pa.string()),
        "reject_detail": pa.array(details, pa.string()),
    }
    return pa.table(columns, schema=WORKING_DIALOGUE)


def _ids(raw: pa.Table) -> list[str]:
    ids = raw["id"].to_pylist()
    names, rows = raw["source_file"].to_pylist(), raw["source_row"].to_pylist()
    return [given if given is not None else f"{name.rsplit('/', 1)[-1]}:{row}"
            for given, name, row in zip(ids, names, rows, strict=True)]


def _row_rejects(raw: pa.Table, messages: pa.ListArray) -> tuple[list[str | None], list[str | None]]:
    """Per row, the first of: what reading found (invalid_utf8, non_text_value, malformed_item), a turn
    whose role is neither user nor counselor (unknown_role), no turns at all (empty_dialogue)."""
    reasons, details = raw["reject_reason"].to_pylist(), raw["reject_detail"].to_pylist()
    roles = pc.list_flatten(messages).field("role")
    unknown = pc.invert(pc.fill_null(pc.is_in(roles, pa.array([ROLE_USER, ROLE_ASSISTANT])), False))
    turn_rows = pc.list_parent_indices(messages).to_numpy(zero_copy_only=False)
    for turn in np.flatnonzero(unknown.to_numpy(zero_copy_only=False)):
        row = turn_rows[turn]
        if reasons[row] is None:
            reasons[row] = "unknown_role"
            details[row] = f"a turn has role {roles[turn].as_py()!r}; known roles: {', '.join(sorted(ROLE_NAMES))}"
    empty = pc.fill_null(pc.equal(pc.list_value_length(messages), 0), True).to_numpy(zero_copy_only=False)
    for row in np.flatnonzero(empty):
        if reasons[row] is None:
            reasons[row], details[row] = "empty_dialogue", "column 'messages' is null or an empty list"
    return reasons, details


_UNREADABLE = ("invalid_utf8", "non_text_value", "malformed_item", "empty_dialogue")


def _place_record_id(source_file: str, source_row: int) -> str:
    return hashlib.sha256(f"unreadable\x1f{source_file}\x1f{source_row}".encode()).hexdigest()[:32]


def _map_roles(messages: pa.ListArray) -> pa.ListArray:
    flat = pc.list_flatten(messages)
    roles = flat.field("role")
    mapped = roles
    for name, role in ROLE_NAMES.items():
        if name != role:
            mapped = pc.if_else(pc.equal(roles, name), role, mapped)
    return _relist(messages, pa.StructArray.from_arrays([mapped, flat.field("content")], fields=list(MESSAGE)))

