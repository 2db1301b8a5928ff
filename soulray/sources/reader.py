"""Read Parquet Q&A tables and normalise them to rewrite units.

Two steps, so that errors name the file and row:
- `plan_fragments` (driver, metadata only): list the files of a source, check every file's columns
  and types against the column map, and cut the work into row groups with their first row number.
- `normalise_fragment` (a Ray task, or plain Python in tests): read one row group, map columns, explode
  wide rows, and turn each answer into a unit, or into a marked reject (empty text, invalid UTF-8).
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import TYPE_CHECKING, Any

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from soulray.errors import SourceError
from soulray.fs import Location, S3Config, resolve
from soulray.schema import NORMALIZE, WORKING_UNIT, question_group, record_id
from soulray.sources.settings import SourceSpec

if TYPE_CHECKING:
    import ray.data

STAGE = NORMALIZE
_TEXT_FIELDS = ("question", "description", "topic")
_ID_FIELDS = ("question_id", "answer_id")


@dataclass(frozen=True)
class Fragment:
    """One row group of one source file: the unit of parallel reading."""

    source_index: int
    uri: str
    row_group: int
    first_row: int
    num_rows: int


@dataclass(frozen=True)
class SourcePlan:
    """The checked files of a source: fragments to read, and each file's lineage facts."""

    fragments: list[Fragment]
    inputs: list[dict[str, object]]  # uri, bytes, rows, fingerprint

    @property
    def rows(self) -> int:
        return sum(int(item["rows"]) for item in self.inputs)


def plan_fragments(spec: SourceSpec, *, source_index: int = 0, s3: S3Config | None = None) -> SourcePlan:
    """Check every file of `spec` and cut it into row-group fragments. Raises SourceError."""
    plan = plan_files(spec.path, check=partial(_check_columns, spec), source_index=source_index, s3=s3)
    if plan.rows == 0:
        raise SourceError(f"{resolve(spec.path, s3).uri}: the source table is empty (0 rows)")
    return plan


def plan_files(path: str, *, check: Callable[[str, pa.Schema], None], source_index: int = 0,
               s3: S3Config | None = None) -> SourcePlan:
    """Every Parquet file under `path`, checked by `check(uri, schema)` (raises SourceError naming the
    file), cut into row-group fragments, with each file's lineage facts."""
    location = resolve(path, s3)
    fragments: list[Fragment] = []
    inputs: list[dict[str, object]] = []
    for file in list_parquet_files(location):
        metadata, size, fingerprint = read_metadata(file)
        check(file.uri, metadata.schema.to_arrow_schema())
        first_row = 0
        for row_group in range(metadata.num_row_groups):
            num_rows = metadata.row_group(row_group).num_rows
            fragments.append(Fragment(source_index, file.uri, row_group, first_row, num_rows))
            first_row += num_rows
        inputs.append({"uri": file.uri, "bytes": size, "rows": metadata.num_rows, "fingerprint": fingerprint})
    return SourcePlan(fragments, inputs)


def read_fragments(fragments: list[Fragment], *, convert: Callable[[Fragment], pa.Table], block_rows: int,
                   wrap: Callable[..., tuple[Callable[..., Any], dict[str, Any]]] | None = None) -> ray.data.Dataset:
    """The Ray adapter: one task per fragment, `convert` (a picklable function of a Fragment) turns its
    rows into working rows, cut into blocks of `block_rows`. `wrap`: StageClock.wrap, to time it."""
    import ray.data

    fn, kwargs = _convert_fragments, {"convert": convert, "block_rows": block_rows}
    if wrap is not None:
        fn, kwargs = wrap(fn, stage=STAGE, kwargs=kwargs)
    items = [dataclasses.asdict(fragment) for fragment in fragments]
    return ray.data.from_items(items, override_num_blocks=max(1, len(items))).map_batches(
        fn, fn_kwargs=kwargs, batch_size=1, batch_format="pyarrow")


def _convert_fragments(batch: pa.Table, *, convert: Callable[[Fragment], pa.Table], block_rows: int):
    for item in batch.to_pylist():
        table = convert(Fragment(**item))
        for start in range(0, table.num_rows, block_rows):
            yield table.slice(start, block_rows)


def normalise_fragments(specs: list[SourceSpec], s3: S3Config | None, fragment: Fragment) -> pa.Table:
    """`normalise_fragment` with the fragment's spec looked up (bind the first two with functools.partial)."""
    return normalise_fragment(fragment, specs[fragment.source_index], s3=s3)


def normalise_fragment(fragment: Fragment, spec: SourceSpec, *, s3: S3Config | None = None) -> pa.Table:
    """Read one fragment and return its rows as WORKING_UNIT (units and marked rejects)."""
    table = read_row_group(fragment.uri, fragment.row_group, s3=s3)
    columns = _present_columns(spec, table.schema)
    rows = _rows(table, columns, spec.layout)
    builder = _UnitBuilder(fragment, spec)
    for offset, row in enumerate(rows):
        builder.add(fragment.first_row + offset, row)
    return builder.table()


def read_row_group(uri: str, row_group: int, *, s3: S3Config | None = None) -> pa.Table:
    """One row group of a Parquet file, or SourceError naming the file and row group."""
    location = resolve(uri, s3)
    try:
        with location.filesystem.open_input_file(location.path) as handle:
            return pq.ParquetFile(handle).read_row_group(row_group)
    except (OSError, pa.ArrowException) as exc:
        raise SourceError(f"{uri}: cannot read row group {row_group}: {exc}") from None


def list_parquet_files(location: Location) -> list[Location]:
    try:
        info = location.filesystem.get_file_info(location.path)
    except OSError as exc:
        raise SourceError(f"{location.uri}: cannot access the source: {exc}") from None
    if info.type == pafs.FileType.NotFound:
        raise SourceError(f"{location.uri}: source path does not exist")
    if info.type == pafs.FileType.File:
        return [location]
    selector = pafs.FileSelector(location.path, recursive=True)
    files = sorted(
        entry.path
        for entry in location.filesystem.get_file_info(selector)
        if entry.type == pafs.FileType.File and entry.path.endswith(".parquet")
    )
    if not files:
        raise SourceError(f"{location.uri}: folder holds no .parquet files")
    root_uri, root_path = location.uri.rstrip("/"), location.path.rstrip("/")
    return [Location(location.filesystem, path, root_uri + path[len(root_path):]) for path in files]


def read_metadata(file: Location) -> tuple[pq.FileMetaData, int, str]:
    """The file's Parquet metadata, size, and a fingerprint: SHA-256 of its size and footer, which
    records every row group's offsets, sizes and statistics, without reading the data pages."""
    try:
        with file.filesystem.open_input_file(file.path) as handle:
            size = handle.size()
            metadata = pq.ParquetFile(handle).metadata
            handle.seek(max(0, size - 8))
            footer_length = int.from_bytes(handle.read(8)[:4], "little")
            handle.seek(max(0, size - 8 - footer_length))
            footer = handle.read(footer_length + 8)
    except (OSError, pa.ArrowException) as exc:
        raise SourceError(f"{file.uri}: not a readable Parquet file ({exc})") from None
    return metadata, size, hashlib.sha256(size.to_bytes(8, "little") + footer).hexdigest()


def _explicit(spec: SourceSpec, field: str) -> bool:
    return field in spec.columns.model_fields_set


def _required_fields(spec: SourceSpec) -> tuple[str, ...]:
    return ("question", "answer") if spec.layout == "long" else ("question", "answers")


def _check_columns(spec: SourceSpec, uri: str, schema: pa.Schema) -> None:
    optional = ("question_id", "description", "topic") + (("answer_id",) if spec.layout == "long" else ())
    for field in _required_fields(spec) + optional:
        column = getattr(spec.columns, field)
        if column not in schema.names:
            if field in _required_fields(spec) or _explicit(spec, field):
                raise SourceError(
                    f"{uri}: missing column {column!r} (mapped to {field}; layout={spec.layout}); "
                    f"the file has columns {schema.names}. Set sources[].columns.{field} to map another."
                )
            continue
        dtype = schema.field(column).type
        if not _type_ok(field, dtype):
            raise SourceError(f"{uri}: column {column!r} ({field}) has type {dtype}, expected {_expected(field)}")


def is_text_type(dtype: pa.DataType) -> bool:
    """Text, bytes that may be text, or all-null (dictionary-encoded too)."""
    if pa.types.is_dictionary(dtype):
        dtype = dtype.value_type
    return pa.types.is_string(dtype) or pa.types.is_large_string(dtype) or pa.types.is_binary(dtype) \
        or pa.types.is_large_binary(dtype) or pa.types.is_null(dtype)


def _type_ok(field: str, dtype: pa.DataType) -> bool:
    if field in _ID_FIELDS:
        return is_text_type(dtype) or pa.types.is_integer(dtype)
    if field == "answers":
        if not (pa.types.is_list(dtype) or pa.types.is_large_list(dtype)):
            return False
        item = dtype.value_type
        return is_text_type(item) or (pa.types.is_struct(item) and item.get_field_index("answer_text") >= 0
                                  and is_text_type(item.field("answer_text").type))
    return is_text_type(dtype)


def _expected(field: str) -> str:
    if field in _ID_FIELDS:
        return "text or integer"
    if field == "answers":
        return "list<string> or list<struct<answer_text: string, …>>"
    return "text (string)"


def _present_columns(spec: SourceSpec, schema: pa.Schema) -> dict[str, str]:
    fields = ("question_id", "answer_id", "question", "description", "answer", "answers", "topic")
    return {field: getattr(spec.columns, field) for field in fields if getattr(spec.columns, field) in schema.names}


def _rows(table: pa.Table, columns: dict[str, str], layout: str) -> list[dict[str, object]]:
    """Python rows with text kept as bytes where the file may hold invalid UTF-8."""
    wanted = {field: name for field, name in columns.items() if layout == "wide" or field != "answers"}
    data = {field: _as_python(table.column(name)) for field, name in wanted.items()}
    return [dict(zip(data, values, strict=True)) for values in zip(*data.values(), strict=True)] if data else []


def _as_python(column: pa.ChunkedArray) -> list[object]:
    """To Python values, reading text as raw bytes: the UTF-8 check is ours, per row, not a crash."""
    dtype = column.type
    if pa.types.is_dictionary(dtype):
        column = column.cast(dtype.value_type)
        dtype = column.type
    if pa.types.is_string(dtype):
        column = pa.chunked_array([chunk.view(pa.binary()) for chunk in column.chunks], pa.binary())
    elif pa.types.is_large_string(dtype):
        column = pa.chunked_array([chunk.view(pa.large_binary()) for chunk in column.chunks], pa.large_binary())
    return column.to_pylist()


class _UnitBuilder:
    """Collects WORKING_UNIT columns for one fragment."""

    def __init__(self, fragment: Fragment, spec: SourceSpec) -> None:
        self._fragment = fragment
        self._spec = spec
        self._columns: dict[str, list[object]] = {name: [] for name in WORKING_UNIT.names}

    def add(self, row_number: int, row: dict[str, object]) -> None:
        texts, bad = {}, []
        for field in _TEXT_FIELDS + _ID_FIELDS:
            texts[field], ok = _decode(row.get(field))
            if not ok:
                bad.append(field)
        answers = self._answers(row)
        question_id = texts["question_id"] or question_group(texts["question"]) or ""
        for index, (answer, answer_ok) in enumerate(answers):
            fields = dict(texts, question_id=question_id)
            fields["answer"] = answer
            if self._spec.layout == "wide" or not fields["answer_id"]:
                fields["answer_id"] = f"{question_id}-{index}" if self._spec.layout == "wide" \
                    else f"{self._fragment.uri.rsplit('/', 1)[-1]}:{row_number}"
            fields["topic"] = fields["topic"] or self._spec.default_topic
            self._append(row_number, fields, bad + ([] if answer_ok else ["answer"]))

    def _answers(self, row: dict[str, object]) -> list[tuple[str, bool]]:
        if self._spec.layout == "long":
            return [_decode(row.get("answer"))]
        items = row.get("answers") or []
        if not items:
            return [("", True)]  # a question without answers becomes one reject, not nothing
        return [_decode(item.get("answer_text") if isinstance(item, dict) else item) for item in items]

    def _append(self, row_number: int, fields: dict[str, str], bad: list[str]) -> None:
        reason, detail = _reject(fields, bad, self._spec)
        values = {
            "record_id": record_id(fields["question"], fields["description"], fields["answer"]),
            "question_id": fields["question_id"],
            "answer_id": fields["answer_id"],
            "topic": fields["topic"],
            "question": fields["question"],
            "description": fields["description"],
            "answer": fields["answer"],
            "source_file": self._fragment.uri,
            "source_row": row_number,
            "reject_stage": STAGE if reason else None,
            "reject_reason": reason,
            "reject_detail": detail,
        }
        for name, value in values.items():
            self._columns[name].append(value)

    def table(self) -> pa.Table:
        return pa.Table.from_pydict(self._columns, schema=WORKING_UNIT)


def _decode(value: object) -> tuple[str, bool]:
    """Text of a cell as str; (replacement-decoded text, False) when the bytes are not UTF-8."""
    if value is None:
        return "", True
    if isinstance(value, bytes):
        try:
            return value.decode("utf-8"), True
        except UnicodeDecodeError:
            return value.decode("utf-8", errors="replace"), False
    return str(value), True


def _reject(fields: dict[str, str], bad: list[str], spec: SourceSpec) -> tuple[str | None, str | None]:
    if bad:
        columns = ", ".join(getattr(spec.columns, field) for field in bad)
        return "invalid_utf8", f"column(s) {columns} hold bytes that are not UTF-8"
    if not fields["question"].strip():
        return "empty_question", f"column {spec.columns.question!r} is null or blank"
    if not fields["answer"].strip():
        column = spec.columns.answer if spec.layout == "long" else spec.columns.answers
        return "empty_answer", f"column {column!r} is null, blank or an empty list"
    return None, None
