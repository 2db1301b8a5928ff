"""The clean job, top to bottom: an existing multi-turn corpus → dialogue filters → a published version.

For corpora people already hold (the released SoulChatCorpus, SMILECHAT, their own), cleaned without
paying for a rewrite. Stages: read (Parquet in the SoulChatCorpus layout `id, topic, messages`, or JSON
converted by the importers) → the dialogue filter chain → MinHash dedup → shards, a run report and a
manifest through the same store code as the regenerate job. Every input dialogue ends as a published
row or a reject row.
"""

from __future__ import annotations

import hashlib
import time
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from soulray.config import (
    CleanConfig,
    CleanInput,
    S3Config,
    check_named_secrets,
    config_hash,
    secret_env_names,
)
from soulray.errors import SourceError
from soulray.filters import DIALOGUE_STAGE, apply_chain, build_chain
from soulray.fs import resolve
from soulray.redaction import redact_tree
from soulray.regenerate import RunResult, dedup_stage
from soulray.runtime import init_ray, refuse_secrets_in_runtime_env
from soulray.schema import (
    DIALOGUE,
    MESSAGE,
    ROLE_ASSISTANT,
    ROLE_USER,
    WORKING_DIALOGUE,
    canonical_text,
    first_user_turn,
    question_group,
)
from soulray.sources.importers import dialogue_items
from soulray.sources.reader import is_text_type, list_parquet_files, read_metadata, read_row_group
from soulray.store import (
    InputFile,
    ShardTarget,
    VersionStore,
    build_manifest,
    new_version_id,
    open_version,
    publish,
    write_shards,
)

if TYPE_CHECKING:
    import ray.data

STAGE = "normalize"
BLOCK_ROWS = 5_000  # rows per pipeline block: a filter batch of a few ms, many blocks per core
# The role vocabularies of the corpora the importers know (SMILECHAT: client/counselor).
ROLE_NAMES = {"user": ROLE_USER, "client": ROLE_USER, "assistant": ROLE_ASSISTANT, "counselor": ROLE_ASSISTANT}
# The input as read: `id` and `question_id` as text (integer ids in decimal), null where absent. A row
# that cannot be used (bytes that are not UTF-8, a value that is not text, a malformed JSON item)
# carries its reject reason from here on.
RAW_DIALOGUE = pa.schema([("id", pa.string()), ("question_id", pa.string()), ("topic", pa.string()),
                          ("messages", pa.list_(MESSAGE)), ("source_file", pa.string()), ("source_row", pa.int64()),
                          ("reject_reason", pa.string()), ("reject_detail", pa.string())])


@dataclass(frozen=True)
class Piece:
    """One row group of one Parquet input: the unit of parallel reading."""

    uri: str
    row_group: int
    first_row: int


@dataclass(frozen=True)
class InputPlan:
    pieces: list[Piece]  # Parquet input: read on the workers
    table: pa.Table | None  # JSON input: converted on the driver (RAW_DIALOGUE)
    inputs: list[InputFile]

    @property
    def rows(self) -> int:
        return sum(item.rows for item in self.inputs)


def run(config: CleanConfig) -> RunResult:
    check_named_secrets(config)  # before Ray or any pipeline starts: fails in a second, naming the key
    started = time.perf_counter()
    run_id = uuid.uuid4().hex[:12]
    store = VersionStore(config.storage.root, config.dataset, s3=config.s3)
    version = config.storage.version or new_version_id(run_id)
    store.require_new(version)

    plan = plan_input(config.input, s3=config.s3)
    input_rows = plan.rows if config.limit is None else min(plan.rows, config.limit)
    timings = {"plan_s": time.perf_counter() - started}

    init_ray(config.ray)
    refuse_secrets_in_runtime_env(secret_env_names(config))
    pipeline = _read(plan, config.s3)
    if config.limit is not None:
        pipeline = pipeline.limit(config.limit)
    pipeline = apply_chain(pipeline, build_chain(config.filters.dialogue, stage=DIALOGUE_STAGE, kind="dialogue"))
    stages: dict[str, Any] = {}
    if config.dedup.enabled:
        against = open_version(config.dedup_against, s3=config.s3) if config.dedup_against else None
        pipeline = dedup_stage(pipeline, config.dedup, "dedup_dialogue", stages, timings, against=against)

    target = ShardTarget(version_uri=store.version_uri(version), run_id=run_id, data_schema=DIALOGUE, s3=config.s3,
                         max_shard_bytes=config.storage.max_shard_mb * 1024 * 1024)
    phase = time.perf_counter()
    shard_facts = write_shards(pipeline, target, rows_per_shard=config.storage.rows_per_shard)
    timings["pipeline_s"] = time.perf_counter() - phase

    manifest = build_manifest(
        store=store, version=version, run_id=run_id, job="clean",
        config=redact_tree(config.model_dump(mode="json")), config_hash=config_hash(config), inputs=plan.inputs,
        input_rows=input_rows, data_schema=DIALOGUE, shard_facts=shard_facts,
        timings_s={**timings, "total_s": time.perf_counter() - started},
    )
    manifest = publish(store, manifest.model_copy(update={"stages": stages}))
    return RunResult(manifest=manifest, version_uri=store.version_uri(version))


# -- reading ----------------------------------------------------------------------------------------
def plan_input(spec: CleanInput, *, s3: S3Config | None = None) -> InputPlan:
    """Check the input and decide how it is read. Raises SourceError naming the file."""
    fmt = spec.format if spec.format != "auto" else detect_format(spec.path)
    if fmt != "parquet":
        return _plan_json(spec.path, fmt)
    pieces, inputs = [], []
    for file in list_parquet_files(resolve(spec.path, s3)):
        metadata, size, fingerprint = read_metadata(file)
        _check_columns(file.uri, metadata.schema.to_arrow_schema())
        first_row = 0
        for row_group in range(metadata.num_row_groups):
            pieces.append(Piece(file.uri, row_group, first_row))
            first_row += metadata.row_group(row_group).num_rows
        inputs.append(InputFile(uri=file.uri, bytes=size, rows=metadata.num_rows, fingerprint=fingerprint))
    if sum(item.rows for item in inputs) == 0:
        raise SourceError(f"{spec.path}: the input holds no dialogues (0 rows)")
    return InputPlan(pieces=pieces, table=None, inputs=inputs)


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


def _plan_json(path: str, fmt: str) -> InputPlan:
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
    return InputPlan(pieces=[], table=table, inputs=[lineage])


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


def _read(plan: InputPlan, s3: S3Config) -> ray.data.Dataset:
    import ray.data

    if plan.table is not None:
        slices = [plan.table.slice(start, BLOCK_ROWS) for start in range(0, plan.table.num_rows, BLOCK_ROWS)]
        raw = ray.data.from_arrow(slices)
    else:
        items = [{"uri": piece.uri, "row_group": piece.row_group, "first_row": piece.first_row}
                 for piece in plan.pieces]
        raw = ray.data.from_items(items, override_num_blocks=len(items)).map_batches(
            _read_pieces, fn_kwargs={"s3": s3}, batch_size=1, batch_format="pyarrow")
    return raw.map_batches(working_dialogues, batch_size=None, batch_format="pyarrow")


def _read_pieces(batch: pa.Table, *, s3: S3Config):
    for item in batch.to_pylist():
        table = read_piece(Piece(**item), s3=s3)
        for start in range(0, table.num_rows, BLOCK_ROWS):
            yield table.slice(start, BLOCK_ROWS)


def read_piece(piece: Piece, *, s3: S3Config | None = None) -> pa.Table:
    """One row group as RAW_DIALOGUE rows (id and topic as text, where they came from); a row whose
    values cannot be read as text is marked with its reject reason, never a crash of the whole file."""
    table = read_row_group(piece.uri, piece.row_group, s3=s3)
    return raw_dialogues(table, source_file=piece.uri, first_row=piece.first_row)


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
    # the regenerate job's own columns (persona, quality gate, source answer): none in a cleaned corpus
    columns.update({name: pa.nulls(rows, WORKING_DIALOGUE.field(name).type) for name in WORKING_DIALOGUE.names
                    if name not in columns})
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


def dialogue_record_id(messages: list[dict[str, str]] | None) -> str:
    """A stable content hash of a dialogue (32 hex chars of SHA-256 over its canonical turns), so reruns
    and dedup agree on what a row is, as `schema.record_id` does for rewrite units."""
    payload = "\x1e".join(f"{turn['role']}\x1f{canonical_text(turn['content'])}" for turn in messages or [])
    return hashlib.sha256(payload.encode("utf-8")).hexdigest()[:32]


def _map_roles(messages: pa.ListArray) -> pa.ListArray:
    flat = pc.list_flatten(messages)
    roles = flat.field("role")
    mapped = roles
    for name, role in ROLE_NAMES.items():
        if name != role:
            mapped = pc.if_else(pc.equal(roles, name), role, mapped)
    return _relist(messages, pa.StructArray.from_arrays([mapped, flat.field("content")], fields=list(MESSAGE)))

